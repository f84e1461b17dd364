"""EpochSummary: what `end_epoch` reports, one row of the epoch log."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class EpochSummary:
    """Attributes:
      epoch, phase, rho_cur: as in the epoch's plan.
      mean_loss: mean over recorded samples (all ranks) of the mean over views; None if none.
      num_recorded: samples recorded this epoch over all ranks (padding repeats included).
      warmup_ended_at: e0 once warm-up has ended, else None.
      num_candidates: |D'| after this epoch.
      num_kept: samples this epoch trained on; pruned_share: 1 - num_kept / N.
      realised_saving: share of all sample-visits so far that were pruned (counted).
      rho_low, rho_high: the per-end shares in use (scaled when a target rate is set).
      schedule_floor: beta of a target rate beyond the cosine cycle's reach (0: the paper's).
      num_unrecorded: kept ids no rank recorded this epoch (drop_last cuts, or lost data);
        0 when nothing was recorded (then coverage is not checked).
      num_repeated: records of an id already recorded this epoch, over all ranks (padding,
        or a batch recorded twice).
    """

    epoch: int
    phase: str
    rho_cur: float
    mean_loss: float | None
    num_recorded: int
    warmup_ended_at: int | None
    num_candidates: int
    num_kept: int
    pruned_share: float
    realised_saving: float
    rho_low: float
    rho_high: float
    schedule_floor: float = 0.0
    num_unrecorded: int = 0
    num_repeated: int = 0

    @property
    def warmup_active(self) -> bool:
        """Is the next epoch still a warm-up epoch?"""
        return self.warmup_ended_at is None or self.warmup_ended_at > self.epoch + 1

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
