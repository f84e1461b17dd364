"""Part 7a: JAX on the device, in a process without torch.

1. JAX's version, backend and devices.
2. The JAX trainer's CLIP step (reference_trainers.jax.steps.make_clip_step over the JAX CLIP
   model, AdamW, state donated), jitted on the GPU, in three loops run in alternating blocks
   (order reversed every round, each block ended by block_until_ready): no SCAN; SCAN with the
   one-step-late `AsyncRecorder(pruner)` (the default, max_pending=1); SCAN with
   `AsyncRecorder(pruner, max_pending=None)`. Batches are placed on the device once (a pool
   cycled through), so the loops differ only by SCAN's work. Overhead: median over rounds of
   t_scan / t_base - 1, and the ratio of the totals; the pruner is in a preparation epoch.
3. adapters.jax.clip_loss and moco_loss on fixed random features, at JAX's default matmul
   precision and at "highest"; inputs and outputs go to WORK/jax_losses.npz for part 7b
   (jax_vs_torch), which computes the torch adapter's losses on the same inputs.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave memory to others

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.gpu_check.runner import PartContext  # noqa: E402

VARIANTS = ("base", "recorder", "recorder_unbounded")
LOSS_BATCH, LOSS_DIM = 256, 512


def run(ctx: PartContext) -> None:
    import jax

    ctx.emit("jax", jax.__version__, note=f"backend {jax.default_backend()}, devices "
             f"{[str(d) for d in jax.devices()]}")
    if jax.default_backend() != "gpu" and not ctx.dry_run:
        raise RuntimeError(f"JAX's backend is {jax.default_backend()!r}, not 'gpu': the "
                           "machine's JAX has no CUDA plugin, or it failed to load (see the log)")
    _losses(ctx)
    _step_overhead(ctx)


def _losses(ctx: PartContext) -> None:
    import jax

    from adapters.jax import clip_loss, moco_loss

    rng = np.random.default_rng(0)
    batch = 16 if ctx.dry_run else LOSS_BATCH

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    inputs = {"image": unit(rng.standard_normal((batch, LOSS_DIM))),
              "text": unit(rng.standard_normal((batch, LOSS_DIM))),
              "scale": np.float32(100.0),
              **{k: rng.standard_normal((batch, 256)).astype(np.float32)
                 for k in ("q1", "q2", "k1", "k2")}}
    outputs = {}
    for precision in ("default", "highest"):
        with jax.default_matmul_precision(precision):
            clip = clip_loss(inputs["image"], inputs["text"], inputs["scale"])
            moco = moco_loss(inputs["q1"], inputs["q2"], inputs["k1"], inputs["k2"], 0.2)
            for name, out in (("clip", clip), ("moco", moco)):
                outputs[f"{name}_{precision}_loss"] = np.asarray(out.loss)
                outputs[f"{name}_{precision}_per_sample"] = np.asarray(out.per_sample)
    np.savez(ctx.work_dir / "jax_losses.npz", **inputs, **outputs)
    gap = np.abs(outputs["clip_default_per_sample"] - outputs["clip_highest_per_sample"]).max()
    ctx.emit("JAX clip_loss: default vs highest matmul precision", f"{gap:.2e}",
             note="max |difference| of per-sample losses (TF32 shows here on a GPU)")


def _step_overhead(ctx: PartContext) -> None:
    import jax

    from adapters.jax import AsyncRecorder
    from reference_trainers.jax.models import CLIP
    from reference_trainers.jax.steps import (TrainState, build_optimizer, init_variables,
                                              lr_schedule, make_clip_step)
    from scan_core import ScanConfig, ScanPruner

    dry = ctx.dry_run
    batch, block, rounds, pool = (32, 2, 2, 2) if dry else (1024, 20, 10, 4)
    context = 24
    model = CLIP(vocab_size=100, eot_id=99, context_length=context)
    tx = build_optimizer("adamw", weight_decay=0.1)
    step = make_clip_step(model, tx, lr_schedule(1e-3, 10.0, 0.5, 1e-5))
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(pool):
        tokens = rng.integers(1, 98, (batch, context)).astype(np.int32)
        tokens[:, -1] = 99
        batches.append(jax.device_put({
            "images": rng.standard_normal((batch, 28, 28, 1)).astype(np.float32),
            "tokens": tokens, "progress": np.float32(1.0)}))
    variables = init_variables(model, 0, batches[0]["images"][:2], batches[0]["tokens"][:2])
    def fresh(tree):  # each loop donates its own buffers
        return jax.tree.map(lambda x: x.copy(), tree)

    states = {v: TrainState(fresh(variables["params"]), fresh(variables["batch_stats"]),
                            tx.init(fresh(variables["params"]))) for v in VARIANTS}
    num_samples = batch * block * (rounds + 1)
    pruners = {v: ScanPruner(num_samples, 2, ScanConfig.clip(warmup_epochs=0))
               for v in VARIANTS[1:]}
    for pruner in pruners.values():
        pruner.plan_epoch(0)
    recorders = {"recorder": AsyncRecorder(pruners["recorder"]),
                 "recorder_unbounded": AsyncRecorder(pruners["recorder_unbounded"],
                                                     max_pending=None)}
    cursor = {v: 0 for v in VARIANTS}

    def run_block(variant: str) -> None:
        state = states[variant]
        for i in range(block):
            state, metrics = step(state, batches[(cursor[variant] // batch + i) % pool])
            if variant != "base":
                ids = np.arange(cursor[variant], cursor[variant] + batch)
                recorders[variant].push(ids, metrics["per_sample"])
            cursor[variant] += batch
        states[variant] = jax.block_until_ready(state)

    t0 = time.perf_counter()
    for variant in VARIANTS:  # compile and warm up
        run_block(variant)
    ctx.emit("JAX CLIP step: compile + warm-up", round(time.perf_counter() - t0, 1), "s",
             note=f"JAX trainer's CLIP (28x28 CNN + 2-layer text), batch {batch}, AdamW")
    times = ctx.interleaved_rounds(VARIANTS, rounds, run_block, reserve_s=8)
    done = len(times["base"])
    base = np.array(times["base"])
    ctx.emit("JAX step without SCAN", round(1000 * base.sum() / (done * block), 3), "ms",
             note=f"{done} rounds of {block} steps")
    for variant in VARIANTS[1:]:
        t = np.array(times[variant][:done])
        ratios = t / base - 1
        ctx.emit(f"JAX overhead, {variant}", round(100 * statistics.median(ratios), 2), "%",
                 note=f"step {1000 * t.sum() / (done * block):.3f} ms; quartiles "
                      f"{100 * np.quantile(ratios, 0.25):+.2f}% / "
                      f"{100 * np.quantile(ratios, 0.75):+.2f}%; ratio of totals "
                      f"{100 * (t.sum() / base.sum() - 1):+.2f}%",
                 median_pct=100 * statistics.median(ratios),
                 totals_pct=100 * (t.sum() / base.sum() - 1))
        recorded = recorders[variant].end_epoch().num_recorded
        expected = cursor[variant]
        if recorded != expected:
            raise RuntimeError(f"{variant}: the pruner saw {recorded} samples, expected {expected}")
    ctx.emit("JAX recorders: samples recorded", cursor["recorder"],
             note="every pushed step reached the pruner (checked for both recorders)")
