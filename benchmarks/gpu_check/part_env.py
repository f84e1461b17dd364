"""Part 1: the environment (GPU, driver, CUDA, torch, Python) and the project imported with
the machine's own torch, no install. JAX's versions and devices are read by the jax part, in a
process without torch."""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys

from benchmarks.gpu_check.runner import PartContext


def run(ctx: PartContext) -> None:
    ctx.emit("python", f"{platform.python_version()} at {sys.executable}")
    ctx.emit("cpu cores", os.cpu_count())
    _nvidia_smi(ctx)
    # The staged wheels first: zarr and the store work before torch is ever imported.
    for name in ("numpy", "numba", "zarr", "numcodecs", "donfig", "google_crc32c",
                 "typing_extensions", "yaml", "PIL"):
        ctx.emit(f"import {name}", _version(name))
    ctx.emit("import scan_core", "ok", note=os.path.relpath(
        importlib.import_module("scan_core").__file__))
    _store_round_trip(ctx)
    import torch

    ctx.emit("torch", f"{torch.__version__} from {os.path.dirname(torch.__file__)}")
    ctx.emit("torch CUDA build", str(torch.version.cuda))
    ctx.emit("cuda available", torch.cuda.is_available())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        ctx.emit("gpu", props.name, note=f"capability {props.major}.{props.minor}, "
                 f"{props.multi_processor_count} SMs")
        ctx.emit("gpu memory", round(props.total_memory / 2**30, 1), "GiB")
        ctx.emit("bf16 supported", torch.cuda.is_bf16_supported())
        version = torch.cuda.nccl.version()
        ctx.emit("nccl", ".".join(map(str, version)) if isinstance(version, tuple) else version)
        ctx.emit("cudnn", torch.backends.cudnn.version())
    elif not ctx.dry_run:
        raise RuntimeError("torch sees no CUDA device; the GPU parts would measure the CPU. "
                           "Run with --dry-run on a machine without a GPU.")
    ctx.emit("import torchvision", _version("torchvision"), note="not needed; reported only")
    for name in ("adapters.torch", "reference_trainers.clip.train",
                 "reference_trainers.moco.train", "reference_trainers.models"):
        module = importlib.import_module(name)
        ctx.emit(f"import {name}", "ok", note=os.path.relpath(module.__file__))


def _version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        return f"MISSING ({exc})"
    where = os.path.dirname(getattr(module, "__file__", "") or "")
    return f"{getattr(module, '__version__', '?')} ({where})"


def _nvidia_smi(ctx: PartContext) -> None:
    if shutil.which("nvidia-smi") is None:
        ctx.emit("nvidia-smi", "not found")
        return
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        ctx.emit("nvidia-smi", out.stdout.strip() or out.stderr.strip(), note=query)
    except (OSError, subprocess.SubprocessError) as exc:
        ctx.emit("nvidia-smi", f"failed: {exc}")


def _store_round_trip(ctx: PartContext) -> None:
    """The zarr store the trainers write (scan_core.store), on this machine's zarr."""
    import numpy as np

    from scan_core import ScanConfig, ScanPruner

    path = ctx.work_dir / "env-store.zarr"
    shutil.rmtree(path, ignore_errors=True)
    pruner = ScanPruner(64, 2, ScanConfig.clip(warmup_epochs=0), store=path)
    pruner.plan_epoch(0)
    pruner.record(np.arange(64), np.random.default_rng(0).random((2, 64), np.float32))
    pruner.end_epoch()
    again = ScanPruner(64, 2, ScanConfig.clip(warmup_epochs=0), store=path)
    same = again.next_epoch == 1 and np.array_equal(again.coreset(), pruner.coreset())
    ctx.emit("zarr store round trip", "ok" if same else "MISMATCH",
             note="ScanPruner store written and resumed")
    if not same:
        raise RuntimeError("the resumed pruner differs from the one that wrote the store")
