"""EpochPlan: which samples one epoch trains on, and how they split over ranks.

A plan is a deterministic function of (config, epoch, candidate snapshot): every rank that
holds the same pruner state holds the same plan. `shard` has the exact arithmetic of PyTorch's
`DistributedSampler` (shuffle by seed + epoch, pad by wrapping or truncate with drop_last,
stride by rank) applied to the kept ids; a framework adapter passes its own permutation
(e.g. torch.randperm) so that with nothing pruned it yields what DistributedSampler yields.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable, Iterator

import numpy as np

from scan_core import bitset
from scan_core.errors import ScanConfigError, ScanInputError
from scan_core.schedule import Phase

Permutation = Callable[[int], np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class EpochPlan:
    """The kept set of one epoch.

    Attributes:
      epoch: the epoch this plan serves.
      phase: "warmup", "prepare" (full data, candidates collected), "mutate" (part of D'
        dropped) or "tail" (full data at the end of a run).
      rho_cur: share of D' dropped this epoch (0 outside mutation epochs).
      num_samples: N, the dataset size.
      num_candidates: |D'| the drop was drawn from (0 when no D' is in use).
      num_kept: samples this epoch trains on; num_samples - num_kept are dropped.
      seed: the run's seed (the default shuffle uses seed and epoch).
      drop_bits: packed bitmap of dropped ids, None when nothing is dropped.
      weight_bits / weight: ids whose loss is scaled by `weight` (InfoBatch's 1 / (1 - r));
        None when every weight is 1.
    """

    epoch: int
    phase: Phase
    rho_cur: float
    num_samples: int
    num_candidates: int
    num_kept: int
    seed: int
    drop_bits: np.ndarray | None = None
    weight_bits: np.ndarray | None = None
    weight: float = 1.0

    # -- counts -------------------------------------------------------------------------------
    @property
    def num_pruned(self) -> int:
        return self.num_samples - self.num_kept

    @property
    def pruned_share(self) -> float:
        """Share of the dataset dropped this epoch."""
        return self.num_pruned / self.num_samples if self.num_samples else 0.0

    @property
    def keep_fraction(self) -> float:
        return 1.0 - self.pruned_share

    # -- ids ----------------------------------------------------------------------------------
    @functools.cached_property
    def kept_ids(self) -> np.ndarray:
        """Sorted int64 ids this epoch trains on, (num_kept,)."""
        if self.drop_bits is None:
            return np.arange(self.num_samples, dtype=np.int64)
        return bitset.ids_of(self.drop_bits, self.num_samples, False)

    def keep_mask(self, ids: np.ndarray) -> np.ndarray:
        """Boolean (len(ids),): is each id kept? For streams that filter before decoding."""
        ids = self._checked_ids(ids)
        if self.drop_bits is None:
            return np.ones(ids.shape, dtype=bool)
        return ~bitset.test_ids(self.drop_bits, ids)

    def loss_weights(self, ids: np.ndarray) -> np.ndarray:
        """float32 (len(ids),) per-sample loss weights: 1, or InfoBatch's 1 / (1 - r)."""
        ids = self._checked_ids(ids)
        out = np.ones(ids.shape, dtype=np.float32)
        if self.weight_bits is not None:
            out[bitset.test_ids(self.weight_bits, ids)] = self.weight
        return out

    def iter_kept_ids(self, chunk_size: int = 1 << 20) -> Iterator[np.ndarray]:
        """Kept ids in ascending order, in chunks, without materialising all of them."""
        if chunk_size < 1:
            raise ScanConfigError(f"chunk_size must be >= 1, got {chunk_size}.")
        for start in range(0, self.num_samples, chunk_size):
            ids = np.arange(start, min(start + chunk_size, self.num_samples), dtype=np.int64)
            if self.drop_bits is not None:
                ids = ids[~bitset.test_ids(self.drop_bits, ids)]
            if len(ids):
                yield ids

    # -- sharding -----------------------------------------------------------------------------
    def shard_length(self, world_size: int, drop_last: bool = False) -> int:
        """Samples per rank this epoch (DistributedSampler's `num_samples`)."""
        _check_world(0, world_size)
        n = self.num_kept
        if drop_last and n % world_size != 0:
            return math.ceil((n - world_size) / world_size)
        return math.ceil(n / world_size)

    def shard(self, rank: int, world_size: int, *, shuffle: bool = True,
              drop_last: bool = False, permutation: Permutation | None = None) -> np.ndarray:
        """int64 ids rank `rank` of `world_size` trains on, in order.

        shuffle: permute the kept ids (all ranks the same way) before splitting.
        drop_last: truncate to a multiple of world_size instead of padding by wrapping.
        permutation: n -> a permutation of range(n); default a numpy PCG64 seeded with
          (seed, epoch). The torch adapter passes torch.randperm seeded with seed + epoch.
        """
        _check_world(rank, world_size)
        kept = self.kept_ids
        n = len(kept)
        if shuffle:
            perm = permutation(n) if permutation is not None else default_permutation(
                self.seed, self.epoch, n)
            perm = np.asarray(perm, dtype=np.int64)
            if perm.shape != (n,):
                raise ScanInputError(
                    f"permutation({n}) returned shape {perm.shape}; expected ({n},).")
            order = perm
        else:
            order = np.arange(n, dtype=np.int64)
        per_rank = self.shard_length(world_size, drop_last)
        total = per_rank * world_size
        if drop_last:
            order = order[:total]
        elif total > n and n > 0:
            reps = math.ceil((total - n) / n)
            order = np.concatenate([order] + [order] * reps)[:total]
        return kept[order[rank:total:world_size]]

    @functools.cached_property
    def fingerprint(self) -> str:
        """A 16-hex-digit digest of (epoch, kept set, weights): equal plans, equal digests."""
        h = hashlib.blake2b(digest_size=8)
        h.update(np.asarray([self.epoch, self.num_samples, self.num_kept], dtype=np.int64).tobytes())
        if self.drop_bits is not None and self.num_pruned:
            h.update(self.drop_bits.tobytes())
        if self.weight_bits is not None and bitset.popcount(self.weight_bits):
            h.update(self.weight_bits.tobytes())
            h.update(np.float64(self.weight).tobytes())
        return h.hexdigest()

    def _checked_ids(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise ScanInputError(f"ids must be integers, got dtype {ids.dtype}.")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_samples):
            raise ScanInputError(
                f"ids must lie in [0, {self.num_samples}), got min {ids.min()}, max {ids.max()}.")
        return ids


def default_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The core's own shuffle: numpy's PCG64 seeded with (seed, epoch)."""
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


def _check_world(rank: int, world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ScanConfigError(f"world_size must be an int >= 1, got {world_size!r}.")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
        raise ScanConfigError(f"rank must be an int in [0, {world_size}), got {rank!r}.")
