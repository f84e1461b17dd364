"""Pruning for iterable (webdataset-style) streams: drop what the epoch's plan prunes before
anything downstream (image decoding) sees it, and split a stream over DataLoader workers.

A stream has no indices to sample, so the plan is applied as a filter keyed by sample id:
`filter_plan` turns (key or id, payload) pairs into (id, payload) pairs of kept samples only.
Keep the payload lazy (raw bytes, or a callable that reads them) so that a pruned sample costs
a key lookup and nothing else.

`PlanIterableDataset` is the torch face: it holds the epoch's plan (`set_plan`, call it before
each epoch, like a sampler's `set_epoch`) and, in each DataLoader worker, asks its source for
that worker's share: `source(plan, worker_id, num_workers)`. With `persistent=True` it serves a
DataLoader built once with `persistent_workers=True`: `set_plan` then writes the plan into a
shared-memory buffer (a pickled plan: two bitmaps of N bits at most), which the running workers
read each time an epoch's iteration starts, so workers are not started afresh every epoch. The source decides the split (see
reference_trainers.common.corpora.shards for one that serves every kept id exactly once across
ranks and workers); this wrapper checks the DataLoader runs the number of workers the source
split for, since a mismatch would silently lose or repeat part of the epoch.

>>> import numpy as np
>>> from scan_core import EpochPlan
>>> plan = EpochPlan(0, "warmup", 0.0, 4, 0, 4, seed=0)
>>> [i for i, _ in filter_plan([("a", b"1"), ("c", b"3")], plan, {"a": 0, "c": 2}.get)]
[0, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import pickle

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from scan_core import EpochPlan, ScanStateError
from scan_core.errors import ScanConfigError, ScanInputError


def filter_plan(stream: Iterable[tuple[Hashable, Any]], plan: EpochPlan,
                key_to_id: Mapping[Hashable, int] | Callable[[Hashable], int | None] | None = None,
                ) -> Iterator[tuple[int, Any]]:
    """Yield (id, payload) for the stream's samples the plan keeps, in stream order.

    stream: (key, payload) pairs; with key_to_id None the keys are already int ids.
    key_to_id: a mapping or a function key -> id in [0, plan.num_samples). A key it does not
      know raises ScanInputError: silently skipping it would serve a sample the pruner never
      counted.
    """
    lookup = key_to_id.get if isinstance(key_to_id, Mapping) else key_to_id
    for key, payload in stream:
        sample_id = key if lookup is None else lookup(key)
        if sample_id is None:
            raise ScanInputError(
                f"stream key {key!r} has no id in key_to_id: rebuild the key index for this "
                "data (every key of the stream needs a dense id)")
        if plan.keep_mask(np.asarray([sample_id], dtype=np.int64))[0]:
            yield int(sample_id), payload


class WorkerSource(Protocol):
    """What PlanIterableDataset iterates: one worker's samples of one epoch."""

    def __call__(self, plan: EpochPlan, worker_id: int, num_workers: int) -> Iterable[Any]: ...


def worker_split() -> tuple[int, int]:
    """(worker id, number of workers) of the calling DataLoader worker; (0, 1) outside one."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class PlanIterableDataset(IterableDataset):
    """An IterableDataset serving `source`'s share of the plan for the current worker.

    source: a WorkerSource. num_workers: the DataLoader's num_workers the source was built for
      (0 and 1 both mean one stream in the main process). persistent: the plan reaches workers
      through shared memory, for a DataLoader with persistent_workers=True (module docstring).
    """

    _HEADER_BYTES = 8  # the pickled plan's length, int64

    def __init__(self, source: WorkerSource, *, num_workers: int = 0, persistent: bool = False):
        if num_workers < 0:
            raise ScanConfigError(f"num_workers must be >= 0, got {num_workers}.")
        self.source = source
        self.num_workers = max(1, num_workers)
        self.persistent = persistent
        self._plan: EpochPlan | None = None
        self._shared: torch.Tensor | None = None  # uint8: length header, then the pickle
        self._worker_epochs = 0  # epochs a worker's copy iterated (a worker's own count)

    def set_plan(self, plan: EpochPlan) -> None:
        """The epoch's plan (pruner.plan_epoch(epoch)); workers started afterwards see it, and
        with persistent=True so do running workers at their next iteration."""
        self._plan = plan
        if not self.persistent:
            return
        blob = pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)
        if self._shared is None:  # room for any plan of this N: two bitmaps and the fields
            capacity = self._HEADER_BYTES + 2 * ((plan.num_samples + 7) // 8) + 65536
            self._shared = torch.zeros(capacity, dtype=torch.uint8).share_memory_()
        room = self._shared.numel() - self._HEADER_BYTES
        if len(blob) > room:
            raise ScanStateError(
                f"PlanIterableDataset: epoch {plan.epoch}'s plan takes {len(blob)} bytes, the "
                f"shared buffer holds {room} (sized for the first plan's num_samples); plans "
                "of one run must share num_samples: build a new dataset and DataLoader")
        view = self._shared.numpy()
        view[self._HEADER_BYTES:self._HEADER_BYTES + len(blob)] = np.frombuffer(blob, np.uint8)
        view[:self._HEADER_BYTES] = np.frombuffer(np.int64(len(blob)).tobytes(), np.uint8)

    @property
    def plan(self) -> EpochPlan:
        if self._shared is not None and get_worker_info() is not None:
            view = self._shared.numpy()
            size = int(np.frombuffer(view[:self._HEADER_BYTES].tobytes(), np.int64)[0])
            return pickle.loads(view[self._HEADER_BYTES:self._HEADER_BYTES + size].tobytes())
        if self._plan is None:
            raise ScanStateError("PlanIterableDataset: call set_plan(pruner.plan_epoch(epoch)) "
                                 "before iterating (each epoch has its own plan).")
        return self._plan

    def __iter__(self) -> Iterator[Any]:
        worker_id, num_workers = worker_split()
        if num_workers != self.num_workers:
            raise ScanConfigError(
                f"the DataLoader runs {num_workers} worker(s) but the stream was split for "
                f"{self.num_workers}: build the dataset with num_workers equal to the "
                "DataLoader's (and persistent=True for persistent_workers=True, so each epoch "
                "sees its plan).")
        stale = get_worker_info() is not None and self._worker_epochs and not self.persistent
        if get_worker_info() is not None:
            self._worker_epochs += 1
        if stale:  # raised from the first batch: torch forwards that to the loop, typed
            return self._refuse_stale()
        return iter(self.source(self.plan, worker_id, num_workers))

    @staticmethod
    def _refuse_stale() -> Iterator[Any]:
        raise ScanConfigError(
            "PlanIterableDataset: a DataLoader worker is iterating a second epoch, so the "
            "DataLoader keeps its workers (persistent_workers=True), and this worker's copy "
            "still holds the first epoch's plan: build the dataset with persistent=True")
        yield  # a generator: the error comes with the first batch


def collate_samples(samples: list[tuple[np.ndarray, np.ndarray, int]]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image uint8 (C, H, W), tokens int64 (L,), id) samples -> stacked (B, C, H, W),
    (B, L), int64 (B,) tensors; a DataLoader collate_fn."""
    images = torch.from_numpy(np.stack([s[0] for s in samples]))
    tokens = torch.from_numpy(np.stack([s[1] for s in samples]).astype(np.int64, copy=False))
    return images, tokens, torch.tensor([int(s[2]) for s in samples], dtype=torch.long)
