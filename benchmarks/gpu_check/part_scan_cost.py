"""Part 3: what SCAN adds to a CLIP training step on the device, in a preparation epoch
(the epoch where record() does the most work: ranking both ends of every batch).

Three loops on one model (ViT-B-32, bf16, batch 256), each with its own optimiser state
copy-free (they share the model; only relative step times matter), run in alternating blocks
(order reversed every round, each block synchronised at its end):
- `mean`: open_clip's loss, the mean cross-entropy of both directions; no per-sample parts, no
  host synchronisation inside the block;
- `scan`: the adapter's clip_loss (per-sample parts from the same logits) and
  adapters.torch.record(pruner, ids, per_sample) after every step, as the CLIP trainer does
  (a device-to-host copy, so one synchronisation per step);
- `scan_late`: the same, but the per-sample losses are copied to pinned host memory without
  blocking and recorded one step later (what a one-step-late recorder, like the JAX adapter's
  AsyncRecorder, would cost the torch trainer). Not in the adapter; measured to know whether it
  is worth adding.
Overhead = median over rounds of t_variant / t_mean - 1, and the ratio of the totals. Target
(issue 19): under 1% for `scan`.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch
import torch.nn.functional as F

from adapters.torch import clip_loss, record
from benchmarks.gpu_check import torch_steps as ts
from benchmarks.gpu_check.runner import PartContext
from scan_core import ScanConfig, ScanPruner

VARIANTS = ("mean", "scan", "scan_late")


def run(ctx: PartContext) -> None:
    dry = ctx.dry_run
    batch, block, rounds = (4, 2, 2) if dry else (256, 5, 12)
    dev, amp = ts.start(dry)
    model = ts.build_clip_model("ViT-B-32", dry).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
    images, tokens = ts.clip_inputs(batch, dev, dry)
    num_samples = batch * block * (rounds + 1)  # every id recorded once per variant
    pruners = {v: ScanPruner(num_samples, 2, ScanConfig.clip(warmup_epochs=0))
               for v in VARIANTS[1:]}
    for pruner in pruners.values():
        plan = pruner.plan_epoch(0)
        if plan.phase != "prepare":
            raise RuntimeError(f"epoch 0 is {plan.phase!r}, expected 'prepare'")
    late = _LateRecorder(pruners["scan_late"], batch, dev)
    cursor = {v: 0 for v in VARIANTS}

    def step(variant: str) -> None:
        ids = np.arange(cursor[variant], cursor[variant] + batch)
        cursor[variant] += batch
        with amp.autocast():
            image_features, text_features, scale = model(images, tokens)
            if variant == "mean":
                logits = scale.float() * image_features.float() @ text_features.float().T
                labels = torch.arange(batch, device=dev)
                loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            else:
                out = clip_loss(image_features.float(), text_features.float(), scale.float())
                loss = out.loss
        optimizer.zero_grad(set_to_none=True)
        amp.backward_step(loss, optimizer)
        if variant == "scan":
            record(pruners["scan"], ids, out.per_sample)
        elif variant == "scan_late":
            late.push(ids, out.per_sample)

    for variant in VARIANTS:  # warm-up: kernels, allocator, Numba's compiled kernels
        for _ in range(block):
            step(variant)
    ts.sync(dev)

    def run_block(variant: str) -> None:
        for _ in range(block):
            step(variant)
        ts.sync(dev)

    times = ctx.interleaved_rounds(VARIANTS, rounds, run_block, reserve_s=10)
    late.flush()
    done = len(times["mean"])
    base = np.array(times["mean"][:done])
    ctx.emit("step, open_clip mean loss", round(1000 * base.sum() / (done * block), 2), "ms",
             note=f"{ts.precision(dry)}, batch {batch}, {done} rounds of {block} steps")
    for variant in VARIANTS[1:]:
        t = np.array(times[variant][:done])
        ratios = t / base - 1
        ctx.emit(f"step, {variant}", round(1000 * t.sum() / (done * block), 2), "ms")
        ctx.emit(f"overhead, {variant}", round(100 * statistics.median(ratios), 2), "%",
                 note=f"median over rounds (quartiles {100 * np.quantile(ratios, 0.25):+.2f}% / "
                      f"{100 * np.quantile(ratios, 0.75):+.2f}%); ratio of totals "
                      f"{100 * (t.sum() / base.sum() - 1):+.2f}%"
                      + ("; target < 1%" if variant == "scan" else ""),
                 median_pct=100 * statistics.median(ratios),
                 totals_pct=100 * (t.sum() / base.sum() - 1))
    _check_recorded(ctx, pruners, done, block, batch)


class _LateRecorder:
    """Records each step's per-sample losses one step late: a non-blocking copy into pinned
    host memory now, record() of the previous step once its copy's event has completed."""

    def __init__(self, pruner: ScanPruner, batch: int, dev: torch.device) -> None:
        self.pruner, self.dev = pruner, dev
        pin = dev.type == "cuda"
        self.buffers = [torch.empty((2, batch), dtype=torch.float32, pin_memory=pin)
                        for _ in range(2)]
        self.pending: tuple | None = None
        self.slot = 0

    def push(self, ids: np.ndarray, per_sample: torch.Tensor) -> None:
        buffer = self.buffers[self.slot]
        self.slot ^= 1
        buffer.copy_(per_sample.detach().float(), non_blocking=True)
        event = torch.cuda.Event() if self.dev.type == "cuda" else None
        if event is not None:
            event.record()
        self.flush()
        self.pending = (ids, buffer, event)

    def flush(self) -> None:
        if self.pending is None:
            return
        ids, buffer, event = self.pending
        if event is not None:
            event.synchronize()
        self.pruner.record(ids, buffer.numpy())
        self.pending = None


def _check_recorded(ctx: PartContext, pruners: dict, rounds: int, block: int,
                    batch: int) -> None:
    """Both SCAN loops recorded every step they ran (warm-up included): the pruner's epoch
    closes with exactly that many samples."""
    expected = (rounds + 1) * block * batch
    for variant, pruner in pruners.items():
        seen = pruner.end_epoch().num_recorded
        ctx.emit(f"{variant}: samples recorded", seen,
                 note=f"expected {expected}; |D'| after the epoch {pruner.num_candidates} "
                      f"of {pruner.num_samples}")
        if seen != expected:
            raise RuntimeError(f"{variant} recorded {seen} samples, expected {expected}")
