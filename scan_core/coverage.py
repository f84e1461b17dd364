"""The coverage check of `ScanPruner.end_epoch`: every kept id recorded once (issue 15, item 3).

`record()` sets each recorded id in the epoch's seen bitmap (N / 8 bytes). At the end of the
epoch the ranks OR their bitmaps, as they do the candidates, and the counts follow:

    distinct   = popcount(seen)
    unrecorded = num_kept - distinct        (ids the loop never served, or lost)
    repeated   = records - distinct          (padding repeats, or a batch recorded twice)

PyTorch's DistributedSampler pads fewer than world_size ids, and drop_last cuts fewer than
world_size ids from the shard and fewer than a batch from each rank's last batch; counts
beyond those allowances are reported.

`EpochTally` is what `record()` keeps for this between plan_epoch and end_epoch: the seen
bitmap, the record count and the largest batch, with the loss total the warm-up's global mean
loss needs.
"""

from __future__ import annotations

import warnings

import numpy as np

from scan_core import bitset
from scan_core.comm import Communicator
from scan_core.errors import ScanCoverageError, ScanCoverageWarning
from scan_core.plan import EpochPlan

POLICIES = ("warn", "error", "off")


def check_coverage(plan: EpochPlan, seen_bits: np.ndarray, num_records: int, max_batch: int,
                   comm: Communicator, policy: str) -> tuple[int, int]:
    """(unrecorded, repeated) over all ranks (a collective when world_size > 1); warns
    (ScanCoverageWarning) or raises (ScanCoverageError, policy "error") with the counts when
    they exceed what padding and drop_last explain. num_records and the per-rank max_batch
    are this rank's; num_records is already summed over ranks."""
    world = comm.world_size
    if world > 1:
        seen_bits = comm.all_reduce(seen_bits, "bor")
        max_batch = int(comm.all_reduce(np.array([max_batch], np.int64), "max")[0])
    distinct = bitset.popcount(seen_bits)
    unrecorded, repeated = plan.num_kept - distinct, num_records - distinct
    pad_allowed = world - 1
    cut_allowed = world - 1 + world * max(0, max_batch - 1)
    problems = []
    if repeated > pad_allowed:
        problems.append(f"{repeated} records repeat an id already recorded this epoch "
                        f"(padding explains at most {pad_allowed})")
    if unrecorded > cut_allowed:
        problems.append(f"{unrecorded} of the {plan.num_kept} kept ids were never recorded "
                        f"(drop_last explains at most {cut_allowed})")
    if problems:
        message = (f"epoch {plan.epoch} ({plan.phase}): {'; '.join(problems)}; "
                   f"{num_records} records of {distinct} distinct ids over {world} rank(s). "
                   "Every kept id should be recorded once per epoch: serve the plan's shard "
                   "once, record each batch once, on every rank.")
        if policy == "error":
            raise ScanCoverageError(message)
        warnings.warn(message, ScanCoverageWarning, stacklevel=5)  # at end_epoch's caller
    return unrecorded, repeated


class EpochTally:
    """One rank's records of the open epoch. seen_bits is None under coverage "off" (no
    bitmap kept; the record kernel then sets nothing)."""

    def __init__(self, num_samples: int, policy: str) -> None:
        self.loss_sum, self.num_records, self.max_batch = 0.0, 0, 0
        self.seen_bits = bitset.new_bits(num_samples) if policy != "off" else None

    def add(self, batch: int, loss_total: float) -> None:
        """Count a recorded batch of `batch` ids whose losses sum to `loss_total`."""
        self.loss_sum += loss_total
        self.num_records += batch
        if batch > self.max_batch:
            self.max_batch = batch

    def close(self, plan: EpochPlan, comm: Communicator,
              policy: str) -> tuple[float | None, int, int, int]:
        """(mean loss over every rank's records or None, their number, unrecorded, repeated):
        a collective; the coverage check runs when anything was recorded and a bitmap kept.
        Reads the tally only, so a failed end_epoch can close it again."""
        stats = comm.all_reduce(np.array([self.loss_sum, self.num_records], np.float64), "sum")
        count = int(stats[1])
        mean_loss = float(stats[0] / count) if count else None
        unrecorded, repeated = (0, 0) if not count or self.seen_bits is None else \
            check_coverage(plan, self.seen_bits, count, self.max_batch, comm, policy)
        return mean_loss, count, unrecorded, repeated
