"""D' at the end of a preparation epoch: the candidate bitmaps and the rules' memory of them.

What `ScanPruner.end_epoch` does with a preparation epoch's records, as one pure function:
- scope="batch": the per-batch candidates `record()` marked are ORed over the ranks
  (SPEC.md: D' is the union of every rank's local selections);
- scope="global": every sample seen is ranked at once (`global_candidates`, with its EMA);
- ill_persistence > 1: the ill-matched end keeps only samples found in as many preparations
  in a row (`history.persistent_ill`);
- retire_share > 0: the ill-matched samples with the highest epoch z leave the run for good
  (`retire.retire_more_chunked`, in chunks; `history.retire_more` is its whole-array twin).
Every array returned is new (or the one passed in, untouched): end_epoch's rollback on a
failure puts the old references back and relies on nothing being changed in place.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scan_core.comm import Communicator
from scan_core.config import ScanConfig
from scan_core.epoch_losses import EpochLosses, global_candidates
from scan_core.history import persistent_ill
from scan_core.retire import retire_more_chunked


class Candidates(NamedTuple):
    """The pruner's candidate state (packed uint8 bitmaps of N bits; None where the config
    does not use it)."""

    red_bits: np.ndarray                 # D' redundant end
    ill_bits: np.ndarray                 # D' ill-matched end
    ema: np.ndarray | None               # (views, N) float32, scope="global" with global_ema
    ill_prev_bits: np.ndarray | None     # (ill_persistence - 1, N / 8) previous raw ill ends
    retired_bits: np.ndarray | None      # retire_share: gone for the rest of the run


def after_preparation(before: Candidates, epoch_losses: EpochLosses | None, config: ScanConfig,
                      epoch: int, rho_low: float, rho_high: float, num_samples: int,
                      comm: Communicator) -> Candidates:
    """The candidates once preparation epoch `epoch` has ended (a collective when
    world_size > 1 and scope="batch"). epoch_losses: every rank's losses of the epoch, needed
    (not None) by scope="global" and retire_share."""
    red, ill, ema, ill_prev, retired = before
    if config.scope == "batch":
        if comm.world_size > 1:
            red, ill = comm.all_reduce(red, "bor"), comm.all_reduce(ill, "bor")
    else:
        assert epoch_losses is not None
        red, ill, ema = global_candidates(epoch_losses, ema, config, epoch, rho_low, rho_high)
    if ill_prev is not None:
        ill, ill_prev = persistent_ill(ill, ill_prev)
    if retired is not None:
        assert epoch_losses is not None
        retired = retire_more_chunked(epoch_losses.mean, num_samples, ill, retired,
                                      int(config.retire_share * num_samples))
    return Candidates(red, ill, ema, ill_prev, retired)
