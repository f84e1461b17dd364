"""Part 2: CLIP RN50 and ViT-B-32 training throughput and peak memory, bf16, eager and
`torch.compile`d, at batch 256 and at the largest batch that fits (doubling from 256, then two
bisection steps), over 30 timed steps after warm-up. Synthetic inputs on the device; the step
is the CLIP trainer's (torch_steps.clip_step: autocast forward, float32 clip_loss, AdamW).
A dry run takes the cpu preset's small CLIP at fp32 in place of both models (torch_steps).

Order, so that the time box cuts the least useful measurements first: eager at 256 (both
models), the largest batch and eager there, then compiled at 256, then compiled at the
largest batch.
"""

from __future__ import annotations

import time
import traceback

import torch

from benchmarks.gpu_check import torch_steps as ts
from benchmarks.gpu_check.runner import PartContext
from reference_trainers.common.accel import AmpSetup, maybe_compile

MODELS = ("RN50", "ViT-B-32")


def settings(dry_run: bool) -> dict:
    """Shapes and counts. A dry run: one stand-in model, tiny batches, no time limits inside
    the part (its time box still applies), compile with the "eager" backend (no C++ build).
    At the largest batch a step takes up to 16x longer, so fewer steps are timed there."""
    if dry_run:
        return dict(models=("ViT-B-32",), batch=4, warmup=1, steps=2, cap=8, multiple=4,
                    large_warmup=1, large_steps=2, compile_backend="eager")
    return dict(models=MODELS, batch=256, warmup=5, steps=30, cap=16384, multiple=64,
                large_warmup=2, large_steps=10, compile_backend=None)


def run(ctx: PartContext) -> None:
    """Order (the time box cuts from the end): eager at 256 for both models; ViT-B-32
    compiled at 256; the largest batch of each model and eager there; RN50 compiled at 256;
    compiled at the largest batches. A compile takes about a minute, so it is started only
    with 60 s left."""
    s = settings(ctx.dry_run)
    dev = ts.device()
    amp = AmpSetup.create(ts.precision(ctx.dry_run), device_type=dev.type)
    largest: dict[str, int] = {}
    failures: list[str] = []
    models = s["models"]
    first_compiled, later_compiled = models[-1:], models[:-1]  # ViT-B-32 first
    for name in models:
        _measure(ctx, name, dev, amp, s["batch"], s, failures, compiled=False)
    for name in first_compiled:
        _measure(ctx, name, dev, amp, s["batch"], s, failures, compiled=True)
    for name in models:
        if ctx.optional_left_s() < 20:
            ctx.emit(f"{name} largest batch", "skipped", note="time box")
            continue
        largest[name] = _largest(ctx, name, dev, amp, s)
        if largest[name] > s["batch"]:
            _measure(ctx, name, dev, amp, largest[name], s, failures, compiled=False)
    for name in later_compiled:
        _measure(ctx, name, dev, amp, s["batch"], s, failures, compiled=True)
    for name in models:  # the same code path as above: a dry run saves its time
        if largest.get(name, 0) > s["batch"] and not ctx.dry_run:
            _measure(ctx, name, dev, amp, largest[name], s, failures, compiled=True)
    if failures:
        raise RuntimeError(f"{len(failures)} configuration(s) failed: {'; '.join(failures)}")


def _build(name: str, dev: torch.device,
           dry_run: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = ts.build_clip_model(name, dry_run).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    return model, optimizer


def _measure(ctx: PartContext, name: str, dev: torch.device, amp: AmpSetup, batch: int,
             s: dict, failures: list[str], *, compiled: bool) -> None:
    """Measure one configuration; a failure is emitted as a FAILED row and added to
    `failures` (the part fails at its end, after the other configurations ran)."""
    label = (f"{name}{' (dry: cpu CLIP)' if ctx.dry_run else ''} {ts.precision(ctx.dry_run)} "
             f"{'compiled' if compiled else 'eager'} batch {batch}")
    need_s = 60 if compiled else 10
    if ctx.optional_left_s() < need_s:
        ctx.emit(label, "skipped", note=f"time box ({ctx.left_s():.0f} s left)")
        return
    model = optimizer = None
    try:
        model, optimizer = _build(name, dev, ctx.dry_run)
        if compiled:
            kwargs = {"backend": s["compile_backend"]} if s["compile_backend"] else {}
            model = maybe_compile(model, True, **kwargs)
        images, tokens = ts.clip_inputs(batch, dev, ctx.dry_run)
        t0 = time.monotonic()
        ts.clip_step(model, optimizer, amp, images, tokens)  # the first step: compile, cudnn
        ts.sync(dev)
        first_s = time.monotonic() - t0
        ts.reset_peak(dev)
        large = batch > s["batch"]
        seconds, steps = ts.time_steps(lambda: ts.clip_step(model, optimizer, amp, images, tokens),
                                       dev, warmup=s["large_warmup" if large else "warmup"],
                                       steps=s["large_steps" if large else "steps"],
                                       deadline=ctx.soft_deadline(5))
        peak = ts.peak_gib(dev)
        ctx.emit(label, round(batch * steps / seconds, 1), "images/s",
                 note=f"{steps} steps, {1000 * seconds / steps:.1f} ms/step; peak "
                      f"{'n/a (CPU)' if peak is None else f'{peak:.1f} GiB'}; first step "
                      f"{first_s:.1f} s",
                 model=name, batch=batch, compiled=compiled, steps=steps,
                 ms_per_step=1000 * seconds / steps, peak_gib=peak, first_step_s=first_s)
    except Exception as exc:  # noqa: BLE001 - one configuration failing must not stop the rest
        message = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        traceback.print_exc()
        if ts.is_oom(exc) and batch > s["batch"]:  # the eager search's batch, compiled: a finding
            ctx.emit(label, "out of memory", note=message)
            return
        ctx.emit(label, "FAILED", note=message)
        failures.append(f"{label}: {message}")
    finally:
        del model, optimizer
        ts.free_memory()


def _largest(ctx: PartContext, name: str, dev: torch.device, amp: AmpSetup, s: dict) -> int:
    model, optimizer = _build(name, dev, ctx.dry_run)

    def try_batch(batch: int) -> None:
        images, tokens = ts.clip_inputs(batch, dev, ctx.dry_run)
        for _ in range(2):
            ts.clip_step(model, optimizer, amp, images, tokens)
        ts.sync(dev)

    t0 = time.monotonic()
    try:
        fits, fails = ts.largest_batch(try_batch, s["batch"], s["cap"], s["multiple"],
                                       ctx.soft_deadline(15))
    finally:
        del model, optimizer
        ts.free_memory()
    ran_out = fails if fails else "none up to " + str(s["cap"])
    ctx.emit(f"{name} largest batch (eager)", fits,
             note=f"first that ran out: {ran_out}; search {time.monotonic() - t0:.0f} s",
             model=name, fits=fits, fails=fails)
    return fits
