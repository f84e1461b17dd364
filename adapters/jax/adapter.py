"""JaxAdapter: the FrameworkAdapter of JAX (adapters/protocol.py), and PlanSampler, the
epoch-by-epoch face of it that the JAX trainers use.

Rank and world size are the processes of `jax.distributed` (`JaxCommunicator`); data
parallelism over one process's local devices is `shard_batch`'s business and invisible here.
The shuffle is numpy's PCG64 with (seed, epoch), as `plan_batches` (JAX cannot reproduce
torch.randperm), and `to_numpy` hands over the host buffer of a CPU array without a copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adapters.batching import EpochPlans, check_pruner_ranks, fold_lone_last
from adapters.host import HostAdapter
from adapters.jax.distributed import JaxCommunicator
from adapters.jax.placement import to_numpy
from scan_core import ScanPruner
from scan_core.comm import Communicator


class JaxAdapter(HostAdapter):
    """communicator: default `JaxCommunicator()` (every process of `jax.distributed`, or one).

    >>> import jax.numpy as jnp
    >>> JaxAdapter().to_numpy(jnp.arange(3)).tolist()
    [0, 1, 2]
    """

    def __init__(self, communicator: Communicator | None = None) -> None:
        super().__init__(communicator if communicator is not None else JaxCommunicator())

    def to_numpy(self, array: Any) -> np.ndarray:
        """`adapters.jax.to_numpy`: an array spread over several processes is refused (take
        this process's rows with `local_rows`)."""
        return to_numpy(array)


class PlanSampler(EpochPlans):
    """One epoch's plan and this process's id batches of it, for a loop that runs epoch by
    epoch: `set_epoch(epoch)` asks the pruner for the plan (as torch's ScanSampler does),
    `batches(batch_size)` serves it.

    pruner: the run's ScanPruner; its communicator must be this adapter's ranks.
    seed: the shuffle's seed (the run's seed).
    adapter: default `JaxAdapter` over the pruner's ranks (`jax.process_index()` of
      `jax.process_count()`).
    """

    def __init__(self, pruner: ScanPruner, seed: int, *,
                 adapter: JaxAdapter | None = None) -> None:
        self.adapter = adapter if adapter is not None else JaxAdapter()
        self.pruner, self.seed, self._plan = pruner, seed, None
        self.rank, self.world = self.adapter.rank, self.adapter.world_size
        check_pruner_ranks(pruner.rank, pruner.world_size, self.rank, self.world,
                           communicator_hint="adapter.communicator()")

    def batches(self, batch_size: int, *, fold_single: bool = False) -> list[np.ndarray]:
        """This process's int64 id batches of the epoch, the same number and lengths on every
        process (DistributedSampler pads by wrapping). fold_single: a lone last id joins the
        batch before it (`fold_lone_last`: BatchNorm cannot train on one sample)."""
        batches = list(self.adapter.plan_batches(self.plan, batch_size, seed=self.seed))
        return fold_lone_last(batches) if fold_single else batches
