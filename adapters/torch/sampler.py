"""ScanSampler: a torch Sampler that serves a ScanPruner's epoch plans.

It has DistributedSampler's exact semantics over the kept ids: the same seed + epoch shuffle
(torch.randperm with a generator seeded seed + epoch), padding by wrapping or drop_last
truncation, rank stride, and a length fixed before iteration. With nothing pruned it yields
exactly what `torch.utils.data.DistributedSampler` yields for the same seed, epoch and rank.

Call `set_epoch(epoch)` before every epoch (as with DistributedSampler). Iterating without it
raises instead of silently replaying epoch 0, the pitfall of open_clip's
`isinstance(sampler, DistributedSampler)` check that never reaches custom samplers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from adapters.batching import EpochPlans, check_pruner_ranks
from scan_core import ScanPruner
from scan_core.errors import ScanConfigError
from scan_core.plan import Permutation


class ScanSampler(EpochPlans, Sampler[int]):
    """Args:
      pruner: the run's ScanPruner; `set_epoch` calls its `plan_epoch`.
      num_replicas / rank: default to torch.distributed's world size and rank (1 / 0 when it is
        not initialised); must match the pruner's communicator.
      shuffle, drop_last: as DistributedSampler.
      seed: shuffle seed; default the pruner's config seed.
    """

    def __init__(self, pruner: ScanPruner, *, num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int | None = None,
                 drop_last: bool = False) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (
            dist.get_world_size() if initialised else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ScanConfigError(
                f"rank must lie in [0, {self.num_replicas}), got {self.rank}.")
        check_pruner_ranks(pruner.rank, pruner.world_size, self.rank, self.num_replicas,
                           communicator_hint="adapters.torch.TorchCommunicator()")
        self.pruner = pruner
        self.shuffle = shuffle
        self.seed = pruner.config.seed if seed is None else int(seed)
        self.drop_last = drop_last
        self._plan = None

    def indices(self) -> np.ndarray:
        """This rank's ids for the epoch, int64, in order."""
        plan = self.plan
        return plan.shard(self.rank, self.num_replicas, shuffle=self.shuffle,
                          drop_last=self.drop_last, permutation=self._permutation)

    def batches(self, batch_size: int, *, drop_last: bool = False) -> "PlanBatchSampler":
        """This rank's ids in batches (int64 arrays): a batch sampler for
        `DataLoader(dataset, batch_sampler=sampler.batches(B))`. It follows the sampler, so
        every pass serves the epoch of the latest `set_epoch`, and `len()` is its batch count.
        drop_last: drop the last partial batch."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ScanConfigError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        return PlanBatchSampler(self, int(batch_size), bool(drop_last))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.plan.shard_length(self.num_replicas, self.drop_last)

    def _permutation(self, n: int) -> np.ndarray:
        return torch_permutation(self.seed, self.plan.epoch)(n)


def torch_permutation(seed: int, epoch: int) -> Permutation:
    """DistributedSampler's shuffle: n -> torch.randperm(n) with a generator seeded
    seed + epoch, as int64 numpy."""
    def permutation(n: int) -> np.ndarray:
        generator = torch.Generator()
        generator.manual_seed(int(seed) + int(epoch))
        return torch.randperm(n, generator=generator).numpy()

    return permutation


class PlanBatchSampler(Sampler[np.ndarray]):
    """Batches of a ScanSampler's ids; re-iterable (each pass reads the sampler's current
    epoch) and sized, as DataLoader's `batch_sampler` must be. Build with
    `ScanSampler.batches(batch_size, drop_last=...)`."""

    def __init__(self, sampler: ScanSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self) -> Iterator[np.ndarray]:
        ids = self.sampler.indices()
        size = self.batch_size
        for i in range(len(self)):
            yield ids[i * size:(i + 1) * size]

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
