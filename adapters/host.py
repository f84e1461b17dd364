"""HostAdapter: the FrameworkAdapter of numpy arrays, and the base the framework adapters
extend.

Everything in the protocol but two things is framework-free: rank and world size are the
communicator's, and a plan's batches are `adapters.batching.serve_batches` under a shuffle.
A framework adapter overrides `to_numpy` (its arrays to host numpy) and, if it has its own
generator that users expect (torch.randperm), `permutation`; the communicator is passed in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from adapters.batching import check_seed, num_batches, serve_batches
from scan_core import EpochPlan
from scan_core.comm import Communicator, SingleProcess
from scan_core.errors import ScanConfigError
from scan_core.plan import Permutation, default_permutation


class HostAdapter:
    """The adapter of a loop whose arrays are numpy (or anything `np.asarray` reads without a
    copy): the reference implementation of `adapters.protocol.FrameworkAdapter`.

    communicator: the ranks' Communicator; default `scan_core.SingleProcess()` (one rank).

    >>> from scan_core import ScanPruner
    >>> adapter = HostAdapter()
    >>> plan = ScanPruner(10, communicator=adapter.communicator()).plan_epoch(0)
    >>> [len(b) for b in adapter.plan_batches(plan, 4)], adapter.num_batches(plan, 4)
    ([4, 4, 2], 3)
    """

    def __init__(self, communicator: Communicator | None = None) -> None:
        self._comm = communicator if communicator is not None else SingleProcess()
        rank, world = self._comm.rank, self._comm.world_size
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int)
                and 0 <= rank < world):
            raise ScanConfigError(
                f"the communicator says rank {rank!r} of world_size {world!r}; a world_size "
                "must be an int >= 1 and a rank an int in [0, world_size). Check the process "
                "group it was built from.")

    @property
    def rank(self) -> int:
        return int(self._comm.rank)

    @property
    def world_size(self) -> int:
        return int(self._comm.world_size)

    def communicator(self) -> Communicator:
        return self._comm

    def to_numpy(self, array: Any) -> np.ndarray:
        """`np.asarray(array)`: the same buffer for a numpy array."""
        return np.asarray(array)

    def permutation(self, seed: int, epoch: int) -> Permutation:
        """The epoch's shuffle, n -> a permutation of range(n), identical on every rank.
        Here numpy's PCG64 seeded with (seed, epoch), as `scan_core.plan.default_permutation`."""
        return lambda n: default_permutation(int(seed), int(epoch), n)

    def num_batches(self, plan: EpochPlan, batch_size: int, *, drop_last: bool = False) -> int:
        return num_batches(plan, batch_size, world_size=self.world_size, drop_last=drop_last)

    def plan_batches(self, plan: EpochPlan, batch_size: int, *, seed: int | None = None,
                     shuffle: bool = True, drop_last: bool = False) -> Iterator[np.ndarray]:
        check_seed(seed)
        permutation = self.permutation(plan.seed if seed is None else seed, plan.epoch)
        return serve_batches(plan, batch_size, rank=self.rank, world_size=self.world_size,
                             permutation=permutation, shuffle=shuffle, drop_last=drop_last)
