"""Part 4: adapters.torch.TorchCommunicator on NCCL (world size 1) against gloo, for every
operation scan_core uses: sum (float64, int64), max (uint8, int64) and the bitmap OR ("bor",
which NCCL lacks: the adapter unpacks bits and reduces by max, in 64 MB chunks; the bitmap
here spans more than one chunk). Then a whole ScanPruner epoch with each communicator: their
states must be identical, and equal to SingleProcess's.

With one rank every reduction is the identity, so this proves the NCCL code path (device
placement, dtypes, the chunked OR, the copy back to the host), not the arithmetic across ranks;
that is tested on the CPU with gloo at two ranks (tests/adapters/torch/test_distributed.py).
A dry run has no NCCL: it runs the same comparison with gloo on both sides.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from adapters.torch import TorchCommunicator
from benchmarks.gpu_check.runner import PartContext
from scan_core import ScanConfig, ScanPruner, SingleProcess


def run(ctx: PartContext) -> None:
    nccl = torch.cuda.is_available() and dist.is_nccl_available()
    if not nccl and not ctx.dry_run:
        raise RuntimeError("NCCL is not available: torch.cuda.is_available() = "
                           f"{torch.cuda.is_available()}, nccl = {dist.is_nccl_available()}")
    if nccl:
        torch.cuda.set_device(0)
    store_file = ctx.work_dir / "nccl-rendezvous"
    store_file.unlink(missing_ok=True)
    backend = "nccl" if nccl else "gloo"
    dist.init_process_group(backend, init_method=f"file://{store_file}", rank=0, world_size=1)
    try:
        main = TorchCommunicator()
        gloo = TorchCommunicator(dist.new_group(backend="gloo"))
        ctx.emit("backends", f"{dist.get_backend()} vs {dist.get_backend(gloo.group)}",
                 note=f"world size {main.world_size}, rank {main.rank}")
        if main._nccl != nccl:
            raise RuntimeError(f"TorchCommunicator._nccl is {main._nccl}, expected {nccl}")
        _compare_ops(ctx, main, gloo, dry_run=ctx.dry_run)
        _compare_pruners(ctx, main, gloo)
    finally:
        dist.destroy_process_group()


def _compare_ops(ctx: PartContext, main: TorchCommunicator, gloo: TorchCommunicator, *,
                 dry_run: bool) -> None:
    rng = np.random.default_rng(0)
    bitmap_bytes = 1 << 16 if dry_run else (64 << 20) // 8 * 2 + 12345  # > 2 chunks on NCCL
    cases = [
        ("sum", rng.standard_normal(1000)),
        ("sum", np.array([123.456, 789.0], np.float64)),
        ("sum", rng.integers(-2**40, 2**40, 1000, dtype=np.int64)),
        ("max", rng.integers(0, 255, 1000, dtype=np.uint8)),
        ("max", rng.integers(-2**40, 2**40, 1000, dtype=np.int64)),
        ("bor", rng.integers(0, 256, bitmap_bytes, dtype=np.uint8)),
        ("bor", np.zeros(17, np.uint8)),
    ]
    for op, array in cases:
        before = array.copy()
        got, ref = main.all_reduce(array, op), gloo.all_reduce(array, op)
        same = (got.dtype == ref.dtype == array.dtype and got.shape == ref.shape
                and np.array_equal(got, ref) and np.array_equal(got, array)
                and np.array_equal(array, before))
        ctx.emit(f"all_reduce {op} {array.dtype} x {array.size}",
                 "equal" if same else "DIFFERENT",
                 note=f"{got.dtype} {got.shape} vs gloo {ref.dtype} {ref.shape}; input untouched:"
                      f" {np.array_equal(array, before)}")
        if not same:
            raise RuntimeError(f"all_reduce({op}) on {array.dtype} differs from gloo's")


def _compare_pruners(ctx: PartContext, main: TorchCommunicator,
                     gloo: TorchCommunicator) -> None:
    """A warm-up-free preparation epoch and the mutation plan after it, per communicator."""
    n, batch = 4096, 256
    rng = np.random.default_rng(1)
    order = rng.permutation(n)
    losses = rng.random((2, n)).astype(np.float32)
    states = {}
    for name, comm in (("main", main), ("gloo", gloo), ("single", SingleProcess())):
        pruner = ScanPruner(n, 2, ScanConfig.clip(warmup_epochs=0), communicator=comm)
        pruner.plan_epoch(0)
        for start in range(0, n, batch):
            ids = order[start:start + batch]
            pruner.record(ids, losses[:, ids])
        pruner.end_epoch()
        plan = pruner.plan_epoch(1)
        states[name] = (pruner.candidate_ids("redundant"), pruner.candidate_ids("ill_matched"),
                        plan.num_kept, np.asarray(plan.kept_ids))
    same = all(all(np.array_equal(a, b) for a, b in zip(states["main"], states[k]))
               for k in ("gloo", "single"))
    ctx.emit("ScanPruner epoch via the communicator", "equal" if same else "DIFFERENT",
             note=f"|D'| redundant {len(states['main'][0])}, ill {len(states['main'][1])}, "
                  f"kept in epoch 1: {states['main'][2]} of {n}; vs gloo and SingleProcess")
    if not same:
        raise RuntimeError("the pruner's state differs between communicators")
