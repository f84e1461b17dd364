"""The communicator protocol: how the core talks across data-parallel ranks without a framework.

An adapter (torch.distributed, jax multihost) implements `Communicator`; the core calls it at
epoch boundaries only: to average the warm-up loss over ranks, to take the union of candidate
bitmaps, and to check that all ranks agree. `ThreadGroup` simulates R ranks in one process
(one thread per rank) for tests and for the simulator.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
from typing_extensions import Protocol, runtime_checkable

from scan_core.errors import ScanDistributedError

ReduceOp = Literal["sum", "max", "bor"]
T = TypeVar("T")


@runtime_checkable
class Communicator(Protocol):
    """All-reduce of a small host numpy array across ranks, plus the rank's identity.

    `all_reduce` is a collective: every rank calls it with an array of the same shape and dtype
    and gets back the reduction ("sum", "max", or "bor" = bitwise or, for uint8 bitmaps).
    It must not modify its input.
    """

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def all_reduce(self, array: np.ndarray, op: ReduceOp) -> np.ndarray: ...


class SingleProcess:
    """The communicator of a run with one rank: every reduction is the identity."""

    rank = 0
    world_size = 1

    def all_reduce(self, array: np.ndarray, op: ReduceOp) -> np.ndarray:
        _check_op(op)
        return np.array(array, copy=True)


class ThreadGroup:
    """R simulated ranks in one process. `group.communicator(r)` is rank r's communicator;
    each rank must run in its own thread (see `run_ranks`)."""

    def __init__(self, world_size: int, timeout_s: float = 120.0) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self._barrier = threading.Barrier(world_size, timeout=timeout_s)
        self._slots: list[Any] = [None] * world_size
        self._result: np.ndarray | None = None
        self._lock = threading.Lock()

    def communicator(self, rank: int) -> "ThreadCommunicator":
        return ThreadCommunicator(self, rank)

    def abort(self) -> None:
        self._barrier.abort()

    def _all_reduce(self, rank: int, array: np.ndarray, op: ReduceOp) -> np.ndarray:
        _check_op(op)
        self._slots[rank] = np.array(array, copy=True)
        if self._barrier.wait() == 0:
            shapes = {(a.shape, a.dtype.str) for a in self._slots}
            if len(shapes) != 1:
                self._result = None
            else:
                self._result = reduce_in_rank_order(self._slots, op)
        self._barrier.wait()
        result = self._result
        try:
            self._barrier.wait()  # nobody reads _result after the next call overwrites it
        except threading.BrokenBarrierError:
            # Every rank reached this wait, so the collective completed; a rank that went on
            # and failed may abort the group before this thread wakes. Keep the result, so
            # this rank goes on to raise its own error rather than a broken barrier.
            pass
        if result is None:
            raise ScanDistributedError(
                f"ranks called all_reduce with different shapes/dtypes: "
                f"{[(a.shape, a.dtype.str) for a in self._slots]}")
        return np.array(result, copy=True)


class ThreadCommunicator:
    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self._group = group
        self._rank = rank

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._group.world_size

    def all_reduce(self, array: np.ndarray, op: ReduceOp) -> np.ndarray:
        return self._group._all_reduce(self._rank, array, op)


def all_or_none(comm: Communicator, step: Callable[[], Any], what: str) -> None:
    """Run `step()` on every rank; if it raised on any rank, raise on every rank: the failing
    ranks their own error, the others a ScanDistributedError naming them. A collective: no
    rank is left waiting in the next one because another rank failed."""
    error: BaseException | None = None
    try:
        step()
    except Exception as exc:  # re-raised below, once every rank knows
        error = exc
    if comm.world_size > 1:
        flags = np.zeros(comm.world_size, np.int64)
        flags[comm.rank] = error is not None
        failed = np.flatnonzero(comm.all_reduce(flags, "sum")).tolist()
        if failed and error is None:
            raise ScanDistributedError(
                f"rank(s) {failed} failed while {what}; see their error. Every rank stops.")
    if error is not None:
        raise error


def check_agreement(comm: Communicator, where: str, parts: Sequence[bytes],
                    described: str) -> None:
    """Raise ScanDistributedError on every rank unless every rank passes the same `parts`
    (a collective). One int64 digest travels: the max over ranks of (d, -d) gives back d
    only when every rank's d is equal. described: this rank's state, for the message."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(part)
    value = np.array([int.from_bytes(digest.digest(), "little") >> 2], dtype=np.int64)
    high = comm.all_reduce(np.concatenate([value, -value]), "max")
    if high[0] != -high[1]:
        raise ScanDistributedError(
            f"ranks disagree on the pruner state at {where} ({described}); every rank needs "
            "the same config, seed, coverage policy and store, and must record its own "
            "batches.")


def run_ranks(world_size: int, fn: Callable[[Communicator], T]) -> list[T]:
    """Run fn(communicator) on `world_size` simulated ranks, one thread each; return the
    results in rank order. The first exception raised by any rank is re-raised here."""
    group = ThreadGroup(world_size)
    results: list[Any] = [None] * world_size
    errors: list[BaseException | None] = [None] * world_size

    def body(rank: int) -> None:
        try:
            results[rank] = fn(group.communicator(rank))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors[rank] = exc
            group.abort()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if real:
        raise real[0]
    if any(e is not None for e in errors):
        raise next(e for e in errors if e is not None)
    return results


def reduce_in_rank_order(arrays: Sequence[np.ndarray], op: ReduceOp) -> np.ndarray:
    """Reduce one array per rank, in rank order (sums left to right, so every communicator
    built on it gives bit-identical float results)."""
    out = np.array(arrays[0], copy=True)
    for a in arrays[1:]:
        if op == "sum":
            out = out + a
        elif op == "max":
            out = np.maximum(out, a)
        else:
            out = out | a
    return out


def _check_op(op: str) -> None:
    if op not in ("sum", "max", "bor"):
        raise ValueError(f"all_reduce op must be 'sum', 'max' or 'bor', got {op!r}")
