"""Serving an EpochPlan as id batches: the framework-free half every adapter shares.

A training loop wants this rank's ids of one epoch in fixed-size batches, the same number of
batches on every rank (ranks that disagree on an epoch's length hang a collective). The ids
come from `EpochPlan.shard`, which has PyTorch `DistributedSampler`'s arithmetic (one shuffle
shared by all ranks, padding by wrapping or drop_last truncation, rank stride); an adapter
supplies only its shuffle (`Permutation`: torch.randperm for torch, numpy PCG64 for JAX).

`fold_lone_last` is the one correction a BatchNorm model needs: a lone last sample cannot be
normalised, so it joins the batch before it (every kept id is still trained on and recorded
once; the batch lengths agree on every rank, so every rank folds alike).

Invariants (tests/adapters/conformance.py runs them against every adapter):
- drop_last=False: over all ranks every kept id is served, and the only repeats are the
  `world_size * plan.shard_length(world_size) - num_kept` padding ids DistributedSampler adds;
  drop_last=True: no id is served twice and every batch is full.
- No pruned id is ever served; every rank serves `num_batches(...)` batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from scan_core import EpochPlan, ScanPruner, ScanStateError
from scan_core.errors import ScanConfigError
from scan_core.plan import Permutation


def num_batches(plan: EpochPlan, batch_size: int, *, world_size: int = 1,
                drop_last: bool = False) -> int:
    """Batches each rank serves this epoch (equal on every rank).

    drop_last=False: ceil(shard / batch_size), the last batch possibly smaller;
    drop_last=True: floor(shard / batch_size), where shard is DistributedSampler's per-rank
    length (`plan.shard_length(world_size, drop_last)`).
    """
    check_batch_size(batch_size)
    per_rank = plan.shard_length(world_size, drop_last)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def serve_batches(plan: EpochPlan, batch_size: int, *, rank: int, world_size: int,
                  permutation: Permutation, shuffle: bool = True,
                  drop_last: bool = False) -> Iterator[np.ndarray]:
    """This rank's int64 id batches of `plan`: `plan.shard(...)` under `permutation`, cut
    into `num_batches(...)` batches of `batch_size` (the last one shorter unless drop_last).
    Everything is checked before the first batch is drawn."""
    check_batch_size(batch_size)
    ids = plan.shard(rank, world_size, shuffle=shuffle, drop_last=drop_last,
                     permutation=permutation)
    count = num_batches(plan, batch_size, world_size=world_size, drop_last=drop_last)
    return (ids[i * batch_size:(i + 1) * batch_size] for i in range(count))


def fold_lone_last(batches: list[np.ndarray]) -> list[np.ndarray]:
    """`batches` with a lone last id joined to the batch before it (in place, and returned).

    BatchNorm cannot train on one sample, and a pruned epoch leaves one over whenever the
    shard's length is one more than a multiple of the batch size. Lengths agree on every rank
    (DistributedSampler pads), so every rank folds alike and the step counts stay equal.

    >>> [len(b) for b in fold_lone_last([np.arange(4), np.arange(4), np.arange(1)])]
    [4, 5]
    """
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


class EpochPlans:
    """The current epoch's plan of a sampler that serves a pruner epoch by epoch (torch's
    ScanSampler, JAX's PlanSampler): `set_epoch(epoch)` fixes it (as with PyTorch's
    DistributedSampler), and asking for it before raises instead of replaying epoch 0."""

    pruner: ScanPruner
    _plan: EpochPlan | None = None

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch's plan (pruner.plan_epoch) and so this sampler's length and order."""
        self._plan = self.pruner.plan_epoch(epoch)

    @property
    def plan(self) -> EpochPlan:
        if self._plan is None:
            raise ScanStateError(
                f"{type(self).__name__}: call sampler.set_epoch(epoch) before iterating or "
                "asking for its plan or length (each epoch has its own plan).")
        return self._plan


def check_batch_size(batch_size: int) -> None:
    """Refuse anything but an int >= 1 (bools too), naming the value."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ScanConfigError(f"batch_size must be an int >= 1, got {batch_size!r}.")


def check_seed(seed: int | None) -> None:
    """Refuse a shuffle seed that is not an int or None (bools too), naming the value."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ScanConfigError(f"seed must be an int or None, got {seed!r}.")


def check_pruner_ranks(pruner_rank: int, pruner_world: int, rank: int, world_size: int,
                       *, communicator_hint: str) -> None:
    """Refuse a sampler whose rank / world size differ from its pruner's communicator's.

    A pruner that believes it is alone keeps its own D' on each rank while the sampler splits
    the data: ranks diverge, ids are served twice or never."""
    if (pruner_rank, pruner_world) != (rank, world_size):
        raise ScanConfigError(
            f"the pruner's communicator has rank {pruner_rank} of world_size {pruner_world} "
            f"but the sampler serves rank {rank} of world_size {world_size}; give the pruner "
            f"the communicator of the same process group (ScanPruner(..., "
            f"communicator={communicator_hint})).")
