"""Pruning for iterable (webdataset-style) streams: drop what the epoch's plan prunes before
anything downstream (image decoding) sees it, and split a stream over DataLoader workers.

A stream has no indices to sample, so the plan is applied as a filter keyed by sample id:
`filter_plan` turns (key or id, payload) pairs into (id, payload) pairs of kept samples only.
Keep the payload lazy (raw bytes, or a callable that reads them) so that a pruned sample costs
a key lookup and nothing else.

`PlanIterableDataset` is the torch face: it holds the epoch's plan (`set_plan`, call it before
each epoch, like a sampler's `set_epoch`) and, in each DataLoader worker, asks its source for
that worker's share: `source(plan, worker_id, num_workers)`. The source decides the split (see
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
      (0 and 1 both mean one stream in the main process).
    """

    def __init__(self, source: WorkerSource, *, num_workers: int = 0):
        if num_workers < 0:
            raise ScanConfigError(f"num_workers must be >= 0, got {num_workers}.")
        self.source = source
        self.num_workers = max(1, num_workers)
        self._plan: EpochPlan | None = None

    def set_plan(self, plan: EpochPlan) -> None:
        """The epoch's plan (pruner.plan_epoch(epoch)); workers started afterwards see it."""
        self._plan = plan

    @property
    def plan(self) -> EpochPlan:
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
                "DataLoader's (with persistent_workers=False, so each epoch sees its plan).")
        return iter(self.source(self.plan, worker_id, num_workers))


def collate_samples(samples: list[tuple[np.ndarray, np.ndarray, int]]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image uint8 (C, H, W), tokens int64 (L,), id) samples -> stacked (B, C, H, W),
    (B, L), int64 (B,) tensors; a DataLoader collate_fn."""
    images = torch.from_numpy(np.stack([s[0] for s in samples]))
    tokens = torch.from_numpy(np.stack([s[1] for s in samples]).astype(np.int64, copy=False))
    return images, tokens, torch.tensor([int(s[2]) for s in samples], dtype=torch.long)
