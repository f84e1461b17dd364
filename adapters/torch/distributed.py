"""torch.distributed glue: the Communicator scan_core needs, feature gathering, and handing
ids and per-sample losses to the pruner.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from scan_core import ScanPruner

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
_CHUNK_BYTES = 64 << 20


class TorchCommunicator:
    """scan_core's Communicator over torch.distributed (gloo on CPU, NCCL on GPUs).

    Reductions run at epoch boundaries only. Arrays travel on the CPU under gloo and on this
    rank's CUDA device under NCCL. NCCL has no bitwise or, so bitmaps are unpacked to one byte
    per bit and reduced by max, in chunks of 64 MB of bits to bound the extra memory.
    """

    def __init__(self, group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("TorchCommunicator needs torch.distributed.init_process_group() "
                               "to have run; for one process use scan_core.SingleProcess().")
        self.group = group
        self._nccl = dist.get_backend(group) == "nccl"

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    def all_reduce(self, array: np.ndarray, op: str) -> np.ndarray:
        if op not in ("sum", "max", "bor"):
            raise ValueError(f"all_reduce op must be 'sum', 'max' or 'bor', got {op!r}")
        if op == "bor" and self._nccl:
            return self._bor_by_max(np.asarray(array, dtype=np.uint8))
        tensor = self._to_device(np.array(array, copy=True))
        dist.all_reduce(tensor, op=dist.ReduceOp.BOR if op == "bor" else _OPS[op],
                        group=self.group)
        return tensor.cpu().numpy()

    def _bor_by_max(self, bits: np.ndarray) -> np.ndarray:
        out = np.empty_like(bits)
        step = max(1, _CHUNK_BYTES // 8)
        for start in range(0, bits.size, step):
            chunk = np.unpackbits(bits[start:start + step])
            tensor = self._to_device(chunk)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
            out[start:start + step] = np.packbits(tensor.cpu().numpy())
        return out

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor.cuda() if self._nccl else tensor


def gather_features(features: torch.Tensor, *, with_grad: bool) -> torch.Tensor:
    """Concatenate every rank's (B, ...) tensor in rank order.

    with_grad: all_gather through torch.distributed.nn, so gradients flow to every rank's
    features. Without it, all_gather returns copies with no gradient; this rank's own slice is
    put back as the original tensor, so its gradient still flows (open_clip's approach).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    if with_grad:
        return _AllGatherWithGrad.apply(features)
    parts = [torch.empty_like(features) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, features.detach().contiguous())
    parts[dist.get_rank()] = features
    return torch.cat(parts, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for this rank's slice.

    Written here rather than taken from torch.distributed.nn: importing that module after
    init_process_group makes gloo processes abort at exit now and then (torch 2.13, seen in
    7 of 30 two-rank runs; tests/adapters/torch/test_distributed.py holds the repro)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def to_numpy(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """Host numpy view of a tensor: no copy for a CPU tensor without grad."""
    if isinstance(tensor, np.ndarray):
        return tensor
    return tensor.detach().cpu().numpy()


def record(pruner: ScanPruner, ids: torch.Tensor | np.ndarray,
           per_sample: torch.Tensor) -> None:
    """Hand one batch to the pruner: ids (B,) and per-sample losses (num_views, B) of this
    rank's own samples (as `clip_loss` / `moco_loss` return them). float32 on the host; the
    device-to-host copy is the only synchronisation this adds to a step."""
    pruner.record(to_numpy(ids), to_numpy(per_sample.detach().float()))
