"""A deterministic synthetic loss stream and a tiny epoch driver shared by the pruner tests.

`LossStream.losses(epoch, ids)` is a pure function of (seed, epoch, id, view): each sample has
a hashed difficulty in [0.5, 3.0]; every loss is difficulty * decay(epoch) * (1 + hashed
noise). decay(e) = floor + (1 - floor) * 0.5**e, so the epoch mean falls by a relative
(1 - floor) * 0.5**e / (floor + (1 - floor) * 0.5**(e - 1)): 0.35, 0.27, ... for floor 0.3,
and SCAN's plateau test (threshold 0.3) ends warm-up for real after epoch 2. The noise differs
per view and per epoch, so two views disagree at the ends of a batch (the top-up runs) and
candidate sets change between preparation epochs.

Nothing here imports scan_core: the expected values the tests compare against come from here,
computed independently of the code under test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def _mix_int(x: int) -> int:
    x &= _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hashed_uniform(seed: int, epoch: int, view: int, ids: np.ndarray) -> np.ndarray:
    """float64 uniforms in [0, 1), one per id, a pure function of (seed, epoch, view, id)."""
    key = _mix_int(_mix_int(seed + 0x1234) ^ _mix_int((epoch + 7) * 0x10001 + view * 0x101))
    ids = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = _mix(np.uint64(key) + (ids + np.uint64(1)) * np.uint64(_GAMMA))
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53


@dataclasses.dataclass(frozen=True)
class LossStream:
    """Per-sample per-view losses of a model that learns: see the module docstring."""

    seed: int = 0
    num_views: int = 2
    floor: float = 0.3
    noise: float = 0.6
    identical_views: bool = False

    def decay(self, epoch: int) -> float:
        return self.floor + (1.0 - self.floor) * 0.5**epoch

    def difficulty(self, ids: np.ndarray) -> np.ndarray:
        return 0.5 + 2.5 * hashed_uniform(self.seed, -1, 99, ids)

    def losses(self, epoch: int, ids: np.ndarray) -> np.ndarray:
        """(num_views, B) float64 losses of the samples `ids` in `epoch`."""
        ids = np.asarray(ids, dtype=np.int64)
        base = self.difficulty(ids) * self.decay(epoch)
        rows = []
        for v in range(self.num_views):
            u = hashed_uniform(self.seed, epoch, 0 if self.identical_views else v, ids)
            rows.append(base * (1.0 + self.noise * (u - 0.5)))
        return np.stack(rows)

    def __call__(self, epoch: int, ids: np.ndarray) -> np.ndarray:
        return self.losses(epoch, ids)


LossFn = Callable[[int, np.ndarray], np.ndarray]


def batches(ids: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(ids), batch_size):
        yield ids[start:start + batch_size]


def epoch_batches(plan: Any, batch_size: int, rank: int = 0, world_size: int = 1,
                  shuffle: bool = True) -> list[np.ndarray]:
    """The batches a data-parallel rank trains on in `plan`'s epoch."""
    return list(batches(plan.shard(rank, world_size, shuffle=shuffle), batch_size))


@dataclasses.dataclass
class EpochRecord:
    """What the driver saw of one epoch."""

    epoch: int
    phase: str
    rho_cur: float
    fingerprint: str
    kept_ids: np.ndarray
    num_kept: int
    candidates_before: np.ndarray
    candidates_after: np.ndarray
    batches: list[np.ndarray]
    summary: Any
    plan: Any


def run_epoch(pruner: Any, epoch: int, loss_fn: LossFn, batch_size: int, *, rank: int = 0,
              world_size: int = 1, shuffle: bool = True,
              skip: Callable[[np.ndarray], np.ndarray] | None = None) -> EpochRecord:
    """plan -> record every batch of this rank's shard -> end_epoch. `skip(ids)` may remove
    ids from a batch before it is recorded (to leave samples unseen)."""
    before = pruner.candidate_ids()
    plan = pruner.plan_epoch(epoch)
    seen = []
    for ids in epoch_batches(plan, batch_size, rank, world_size, shuffle):
        if skip is not None:
            ids = skip(ids)
        if len(ids):
            pruner.record(ids, loss_fn(epoch, ids))
            seen.append(ids)
    summary = pruner.end_epoch()
    return EpochRecord(epoch=epoch, phase=plan.phase, rho_cur=plan.rho_cur,
                       fingerprint=plan.fingerprint, kept_ids=plan.kept_ids.copy(),
                       num_kept=plan.num_kept, candidates_before=before,
                       candidates_after=pruner.candidate_ids(), batches=seen, summary=summary,
                       plan=plan)


def run(pruner: Any, epochs: range | int, loss_fn: LossFn, batch_size: int,
        **kw: Any) -> list[EpochRecord]:
    if isinstance(epochs, int):
        epochs = range(pruner.next_epoch, epochs)
    return [run_epoch(pruner, e, loss_fn, batch_size, **kw) for e in epochs]


# -- independent expectations ----------------------------------------------------------------

def rho_cur_formula(c: int, t_cos: int) -> float:
    """SPEC.md: rho_cur = 0.5 * (1 + cos(pi * (T - c) / T)), 0 at c = 0."""
    return 0.0 if c == 0 else 0.5 * (1.0 + math.cos(math.pi * (t_cos - c) / t_cos))


def plateau_e0(mean_losses: list[float], threshold: float) -> int | None:
    """SPEC.md phase 1 on a list of epoch mean losses: the first e > 0 with a relative drop
    below the threshold gives e0 = e + 1 (no guards)."""
    prev = None
    for e, loss in enumerate(mean_losses):
        if e > 0 and prev is not None and (prev - loss) / (prev + 1e-8) < threshold:
            return e + 1
        prev = loss
    return None


def full_epoch_mean(stream: LossStream, epoch: int, num_samples: int) -> float:
    """Mean over all samples of the mean over views, for an epoch that saw every sample."""
    return float(stream.losses(epoch, np.arange(num_samples)).mean(axis=0).mean())
