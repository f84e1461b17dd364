"""Torch helpers shared by the parts: the device, timing with CUDA synchronisation, peak memory,
the CLIP and MoCo training steps as the reference trainers run them, and the largest-batch
search. Synthetic inputs are made on the device, so the numbers are the model's, not a loader's.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import torch

from adapters.torch import clip_loss, moco_loss
from reference_trainers.common.accel import AmpSetup


def device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated in GiB since the last reset_peak; None on a CPU."""
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None


def free_memory() -> None:
    """Return freed tensors' memory to CUDA (after an out-of-memory try, between models).
    A no-op without CUDA, where nothing is cached and gc.collect() would only cost time."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


#: A dry run's stand-ins: the cpu preset's models at fp32. bf16 autocast on this project's
#: 2-core CPUs is no rehearsal: one RN50 step at batch 2 took 120 s there.
DRY_PRECISION, GPU_PRECISION = "fp32", "bf16"
_CLIP_SHAPES = {True: dict(channels=1, image_size=28, context=24, vocab=100, eot=99),
                False: dict(channels=3, image_size=224, context=77, vocab=49408, eot=49407)}


def precision(dry_run: bool) -> str:
    return DRY_PRECISION if dry_run else GPU_PRECISION


def start(dry_run: bool) -> tuple[torch.device, AmpSetup]:
    """A timed torch part's start: the device, its autocast at the part's precision, and
    torch's generator seeded with 0 (the model's initialisation repeats run to run)."""
    dev = device()
    amp = AmpSetup.create(precision(dry_run), device_type=dev.type)
    torch.manual_seed(0)
    return dev, amp


def build_clip_model(name: str, dry_run: bool) -> torch.nn.Module:
    """The GPU preset `name` (RN50, ViT-B-32: reference_trainers.models.build_clip), or in a
    dry run the cpu preset's small CLIP (28x28 grey, context 24) standing in for it."""
    if dry_run:
        from reference_trainers.clip.model import build_cpu_clip

        shapes = _CLIP_SHAPES[True]
        return build_cpu_clip(vocab_size=shapes["vocab"], eot_id=shapes["eot"],
                              context_length=shapes["context"])
    from reference_trainers.models import build_clip

    return build_clip(name)


def clip_inputs(batch: int, dev: torch.device, dry_run: bool = False, *,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (B, C, S, S) float images and (B, context) int64 tokens for build_clip_model's
    model, each token row ending in <eot> at a random position, as CLIP's BPE rows do."""
    shapes = _CLIP_SHAPES[dry_run]
    channels, image_size = shapes["channels"], shapes["image_size"]
    context, eot = shapes["context"], shapes["eot"]
    g = torch.Generator(device="cpu").manual_seed(seed)
    images = torch.randn(batch, channels, image_size, image_size, generator=g)
    tokens = torch.randint(1, eot - 1, (batch, context), generator=g)
    ends = torch.randint(4, context, (batch,), generator=g)
    tokens[torch.arange(batch), ends] = eot
    tokens[torch.arange(context)[None, :] > ends[:, None]] = 0
    return images.to(dev), tokens.to(dev)


def clip_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, amp: AmpSetup,
              images: torch.Tensor, tokens: torch.Tensor) -> Any:
    """One CLIP training step as reference_trainers/clip/train.py takes it: forward under
    autocast, the adapter's clip_loss in float32, backward and AdamW step. Returns the
    ContrastiveLoss (loss, per_sample (2, B))."""
    with amp.autocast():
        image_features, text_features, scale = model(images, tokens)
        out = clip_loss(image_features.float(), text_features.float(), scale.float())
    optimizer.zero_grad(set_to_none=True)
    amp.backward_step(out.loss, optimizer)
    return out


def moco_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, amp: AmpSetup,
              x1: torch.Tensor, x2: torch.Tensor, momentum: float = 0.99) -> Any:
    """One MoCo v3 step as reference_trainers/moco/train.py takes it (momentum update inside
    the model's forward, keys without gradient)."""
    with amp.autocast():
        q1, q2, k1, k2 = model(x1, x2, momentum)
        out = moco_loss(q1.float(), q2.float(), k1.float(), k2.float(), 0.2)
    optimizer.zero_grad(set_to_none=True)
    amp.backward_step(out.loss, optimizer)
    return out


def time_steps(step: Callable[[], Any], dev: torch.device, *, warmup: int, steps: int,
               deadline: float) -> tuple[float, int]:
    """Seconds for `steps` calls of step() after `warmup` untimed ones, synchronised at both
    ends; stops early at `deadline` (time.monotonic()). Returns (seconds, steps timed)."""
    for _ in range(warmup):
        step()
    sync(dev)
    t0 = time.perf_counter()
    done = 0
    for _ in range(steps):
        step()
        done += 1
        if time.monotonic() > deadline:
            break
    sync(dev)
    return time.perf_counter() - t0, done


def largest_batch(try_batch: Callable[[int], None], start: int, cap: int, multiple: int,
                  deadline: float) -> tuple[int, int | None]:
    """The largest batch (a multiple of `multiple`, at most `cap`) for which try_batch(b) runs
    without running out of memory: doubling from `start`, then two bisection steps between the
    last that fitted and the first that did not. Returns (largest that fitted, first that ran
    out or None). Raises what try_batch raises other than out-of-memory."""
    fits, fails = 0, None
    batch = start
    while batch <= cap and time.monotonic() < deadline:
        if _fits(try_batch, batch):
            fits, batch = batch, batch * 2
        else:
            fails = batch
            break
    for _ in range(2):
        if fails is None or time.monotonic() > deadline:
            break
        middle = (fits + fails) // 2 // multiple * multiple
        if middle <= fits:
            break
        if _fits(try_batch, middle):
            fits = middle
        else:
            fails = middle
    return fits, fails


def _fits(try_batch: Callable[[int], None], batch: int) -> bool:
    try:
        try_batch(batch)
        return True
    except Exception as exc:  # noqa: BLE001 - anything but out-of-memory is re-raised
        if not is_oom(exc):
            raise
        return False
    finally:
        free_memory()
