"""Worker bodies for the two- and three-process torch.distributed (gloo) tests.

`main(rank, world_size, port, out_dir, task, kwargs)` is what torch.multiprocessing.spawn runs:
it joins a gloo group on 127.0.0.1, runs `TASKS[task](rank, world_size, **kwargs)` and pickles
the returned dict (numpy arrays and plain Python values) to `out_dir/rank{rank}.pkl`. A failure
writes its traceback to `out_dir/rank{rank}.err` and re-raises, so the parent sees it.

Everything here is importable at module level (spawn pickles functions by name). The inputs
each rank uses are pure functions of (seed, rank) so that the test process can rebuild the
global batch and compute the single-process reference itself.
"""

from __future__ import annotations

import datetime
import importlib
import os
import pathlib
import pickle
import traceback
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from adapters.torch import ScanSampler, TorchCommunicator, clip_loss, moco_loss, record
from scan_core import ScanConfig, ScanPruner
from tests.core.streams import LossStream, hashed_uniform


def main(rank: int, world_size: int, port: int, out_dir: str, task: str,
         kwargs: dict[str, Any]) -> None:
    torch.set_num_threads(1)  # two cores, several processes
    out = pathlib.Path(out_dir)
    if task != "gather_exit":
        # torch 2.13 (gloo): a process that first imports torch.distributed.nn after
        # init_process_group and then runs a collective aborts at interpreter exit about one
        # time in three ("terminate called without an active exception"). gather_features
        # imports it lazily; importing it here, before the group exists, keeps the loss tests
        # about the losses. test_gather_with_grad_exits_cleanly holds the adapter to the exit.
        importlib.import_module("torch.distributed.nn")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        result = TASKS[task](rank, world_size, **kwargs)
        with open(out / f"rank{rank}.pkl.tmp", "wb") as f:
            pickle.dump(result, f)
        os.replace(out / f"rank{rank}.pkl.tmp", out / f"rank{rank}.pkl")
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


# -- TorchCommunicator ---------------------------------------------------------------------------

REDUCE_CASES = [("float64", "sum"), ("float64", "max"), ("int64", "sum"), ("int64", "max"),
                ("int64", "bor"), ("uint8", "sum"), ("uint8", "max"), ("uint8", "bor")]


def comm_input(dtype: str, rank: int, shape: tuple[int, ...] = (5, 7)) -> np.ndarray:
    """Rank `rank`'s input: small values so a uint8 sum over three ranks does not wrap."""
    rng = np.random.default_rng([rank, 11])
    if dtype == "float64":
        return rng.standard_normal(shape) * 1e3
    if dtype == "int64":
        return rng.integers(-(2**40), 2**40, shape, dtype=np.int64)
    return rng.integers(0, 80, shape, dtype=np.uint8)


def comm_task(rank: int, world_size: int) -> dict[str, Any]:
    comm = TorchCommunicator()
    out: dict[str, Any] = {"rank": comm.rank, "world_size": comm.world_size}
    for dtype, op in REDUCE_CASES:
        array = comm_input(dtype, rank)
        before = array.copy()
        result = comm.all_reduce(array, op)
        out[(dtype, op)] = result
        out[(dtype, op, "input_unchanged")] = bool(np.array_equal(array, before))
    # A strided (non-contiguous) view and a packed bitmap of the length a pruner uses.
    view = comm_input("float64", rank, (6, 8))[:, ::2]
    out["strided"] = comm.all_reduce(view, "sum")
    bits = np.packbits(np.random.default_rng([rank, 3]).random(1001) < 0.2, bitorder="little")
    out["bitmap"] = comm.all_reduce(bits, "bor")
    return out


# -- ScanSampler + ScanPruner ---------------------------------------------------------------------

class SampleIds(Dataset):
    """A map-style dataset whose item i is just i (the DataLoader collates ids to int64)."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> int:
        return index


def stream_losses(stream: LossStream, epoch: int, ids: np.ndarray) -> np.ndarray:
    """The loss stream at the precision the adapter hands to the pruner (float32)."""
    return stream.losses(epoch, ids).astype(np.float32)


def scan_task(rank: int, world_size: int, *, num_samples: int, batch_size: int, epochs: int,
              drop_last: bool = False, seed: int = 0, store: str | None = None) -> dict[str, Any]:
    """A pruned run: ScanSampler feeds a DataLoader, each batch's per-view losses (the
    deterministic LossStream of tests/core) go through adapters.torch.record."""
    pruner = ScanPruner(num_samples, 2, ScanConfig.clip(seed=seed), store,
                        communicator=TorchCommunicator())
    sampler = ScanSampler(pruner, drop_last=drop_last)
    loader = DataLoader(SampleIds(num_samples), batch_size=batch_size, sampler=sampler)
    stream = LossStream(seed=seed)
    out: dict[str, Any] = {"start_epoch": pruner.next_epoch, "epochs": []}
    for epoch in range(pruner.next_epoch, epochs):
        sampler.set_epoch(epoch)
        plan = sampler.plan
        served = []
        for ids in loader:
            served.append(ids.numpy().copy())
            record(pruner, ids, torch.from_numpy(stream_losses(stream, epoch, ids.numpy())))
        summary = pruner.end_epoch()
        out["epochs"].append({
            "epoch": epoch, "phase": plan.phase, "fingerprint": plan.fingerprint,
            "num_kept": plan.num_kept, "kept_ids": plan.kept_ids.copy(),
            "served": np.concatenate(served) if served else np.zeros(0, np.int64),
            "num_batches": len(served), "len_sampler": len(sampler), "len_loader": len(loader),
            "candidates": pruner.candidate_ids(), "summary": summary.as_dict()})
    out["warmup_ended_at"] = pruner.warmup_ended_at
    return out


# -- warm-up on the global mean -----------------------------------------------------------------

#: Epoch loss levels per rank. Rank 0's own curve flattens after epoch 1 (relative drop 0.05 at
#: epoch 2, so its local plateau test would start pruning at epoch 3); rank 1's keeps halving
#: until epoch 3, and the global mean drops by more than 30% until epoch 4 (pruning at 5).
WARMUP_LEVELS = ((4.0, 2.0, 1.9, 1.85, 1.8, 1.75, 1.7), (40.0, 20.0, 10.0, 5.0, 4.9, 4.8, 4.7))


def warmup_task(rank: int, world_size: int, *, num_samples: int, batch_size: int,
                epochs: int) -> dict[str, Any]:
    pruner = ScanPruner(num_samples, 2, ScanConfig.clip(), communicator=TorchCommunicator())
    sampler = ScanSampler(pruner)
    loader = DataLoader(SampleIds(num_samples), batch_size=batch_size, sampler=sampler)
    local_sum, local_count, summaries, phases = [], [], [], []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        phases.append(sampler.plan.phase)
        total, count = 0.0, 0
        for ids in loader:
            noise = np.stack([hashed_uniform(3, epoch, v, ids.numpy()) for v in range(2)])
            losses = (WARMUP_LEVELS[rank][epoch] * (0.95 + 0.1 * noise)).astype(np.float32)
            record(pruner, ids, torch.from_numpy(losses))
            total += float(losses.astype(np.float64).mean(axis=0).sum())
            count += len(ids)
        local_sum.append(total)
        local_count.append(count)
        summaries.append(pruner.end_epoch().as_dict())
    return {"local_sum": local_sum, "local_count": local_count, "summaries": summaries,
            "phases": phases, "warmup_ended_at": pruner.warmup_ended_at}


# -- losses under gather ---------------------------------------------------------------------------

CLIP_MODES = [(False, False), (False, True), (True, False), (True, True)]  # (local, with_grad)


def clip_inputs(world_size: int, batch: int, dim: int, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch: (world_size * batch, dim) L2-normalised float64 image and text
    features, text features correlated with their image, and (world_size * batch,) per-sample
    loss weights in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(world_size * batch, dim, generator=g, dtype=torch.float64)
    texts = images + 0.8 * torch.randn(world_size * batch, dim, generator=g, dtype=torch.float64)
    norm = torch.nn.functional.normalize
    weights = 0.5 + torch.rand(world_size * batch, generator=g, dtype=torch.float64)
    return norm(images, dim=1), norm(texts, dim=1), weights


CLIP_SCALE = 1 / 0.07


def clip_task(rank: int, world_size: int, *, batch: int, dim: int) -> dict[str, Any]:
    images, texts, weights = clip_inputs(world_size, batch, dim)
    own = slice(rank * batch, (rank + 1) * batch)
    out: dict[str, Any] = {}
    for local, with_grad in CLIP_MODES:
        image = images[own].clone().requires_grad_(True)
        text = texts[own].clone().requires_grad_(True)
        scale = torch.tensor(CLIP_SCALE, dtype=torch.float64, requires_grad=True)
        result = clip_loss(image, text, scale, local_loss=local, gather_with_grad=with_grad)
        result.loss.backward()
        weighted = clip_loss(images[own], texts[own], CLIP_SCALE, local_loss=local,
                             gather_with_grad=with_grad, weights=weights[own])
        out[(local, with_grad)] = {
            "loss": result.loss.item(), "per_sample": result.per_sample.detach().numpy(),
            "grad_image": image.grad.numpy(), "grad_text": text.grad.numpy(),
            "grad_scale": scale.grad.item(), "weighted_loss": weighted.loss.item(),
            "weighted_per_sample": weighted.per_sample.numpy()}
    return out


def moco_inputs(world_size: int, batch: int, dim: int, seed: int = 1) -> list[torch.Tensor]:
    """q1, q2, k1, k2 of the global batch, (world_size * batch, dim) float64, not normalised
    (moco_loss normalises)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(world_size * batch, dim, generator=g, dtype=torch.float64)
    return [base + 0.7 * torch.randn(world_size * batch, dim, generator=g, dtype=torch.float64)
            for _ in range(4)]


MOCO_TEMPERATURE = 0.2


def moco_task(rank: int, world_size: int, *, batch: int, dim: int) -> dict[str, Any]:
    q1, q2, k1, k2 = moco_inputs(world_size, batch, dim)
    own = slice(rank * batch, (rank + 1) * batch)
    q1, q2 = q1[own].clone().requires_grad_(True), q2[own].clone().requires_grad_(True)
    k1, k2 = k1[own].clone().requires_grad_(True), k2[own].clone().requires_grad_(True)
    result = moco_loss(q1, q2, k1, k2, MOCO_TEMPERATURE)
    result.loss.backward()
    return {"loss": result.loss.item(), "per_sample": result.per_sample.detach().numpy(),
            "grad_q1": q1.grad.numpy(), "grad_q2": q2.grad.numpy(),
            "keys_have_grad": k1.grad is not None or k2.grad is not None}


def gather_exit_task(rank: int, world_size: int) -> dict[str, Any]:
    """What a user's DDP step with gather_with_grad does, in a process that imported the
    adapter before init_process_group and nothing else of torch.distributed."""
    images, texts, _ = clip_inputs(world_size, 4, 3)
    own = slice(rank * 4, (rank + 1) * 4)
    image = images[own].clone().requires_grad_(True)
    clip_loss(image, texts[own], CLIP_SCALE, gather_with_grad=True).loss.backward()
    return {"grad_finite": bool(torch.isfinite(image.grad).all())}


def conformance_task(rank: int, world_size: int) -> dict[str, Any]:
    """tests/adapters/conformance.py's two-rank body with the default TorchAdapter."""
    from adapters.torch import TorchAdapter
    from tests.adapters.conformance import two_rank_body

    return two_rank_body(TorchAdapter())


TASKS = {"gather_exit": gather_exit_task, "comm": comm_task, "scan": scan_task, "warmup": warmup_task, "clip": clip_task,
         "moco": moco_task, "conformance": conformance_task}
