"""What each rule drops in an epoch: SCAN and the baselines behind the same face.

- scan: drop floor(rho_cur * |D'|) of D', uniformly, fresh each mutation epoch (SPEC.md).
- static: the same, but D' is frozen after the first preparation epoch.
- random: drop as many as SCAN would (floor(rho_cur * |D'|), |D'| counted by SCAN's own
  selection on the same loss stream; with ill_every_mutation, every ill-matched candidate's
  worth plus rho_cur of the rest), drawn uniformly from all N: SCAN's budget, no ranking.
- full: never drop.
- infobatch: InfoBatch's rule (arXiv 2303.04947): drop floor(r * |W|) of the samples W whose
  last loss is below the mean of all last losses, weight the rest of W by 1 / (1 - r), and
  train on full data from epoch delta * E on. Epoch 0 has no scores yet: full data.
Redundant-only and ill-only are rule "scan" with mode "redundant" / "ill_matched".
"""

from __future__ import annotations

import numpy as np

from scan_core import bitset
from scan_core.config import ScanConfig
from scan_core.schedule import Phase, epoch_rho, scan_phase
from scan_core.select import SALT_DROP, SALT_INFOBATCH, draw_subset, stream_key


def phase_and_rho(config: ScanConfig, epoch: int, e0: int | None,
                  floor: float = 0.0) -> tuple[Phase, float]:
    """Phase of `epoch` and the share of D' it drops: rho_cur, raised by a target rate's
    schedule floor (for infobatch: its prune ratio r, 0 when not pruning)."""
    if config.rule == "full":
        return "full", 0.0
    if config.rule == "infobatch":
        assert config.num_epochs is not None  # ScanConfig enforces it for infobatch
        if epoch == 0:
            return "warmup", 0.0
        if epoch < config.infobatch_delta * config.num_epochs:
            return "mutate", config.infobatch_prune_ratio
        return "tail", 0.0
    kw = {"num_epochs": config.num_epochs, "full_tail_epochs": config.full_tail_epochs}
    return (scan_phase(epoch, e0, config.t_cos, **kw),
            epoch_rho(epoch, e0, config.t_cos, floor=floor, **kw))


def collects_candidates(config: ScanConfig, phase: str, num_preparations: int) -> bool:
    """Whether a preparation epoch rebuilds D' (static freezes it after the first)."""
    if phase != "prepare" or config.rule not in ("scan", "random", "static"):
        return False
    return not (config.rule == "static" and num_preparations >= 1)


def scan_family_drop(config: ScanConfig, epoch: int, rho: float, num_samples: int,
                     red_bits: np.ndarray, ill_bits: np.ndarray) -> tuple[np.ndarray, int]:
    """Drop bitmap of a mutation epoch of scan / static / random, and |D'|."""
    candidates = red_bits | ill_bits
    num_candidates = bitset.popcount(candidates)
    drop = bitset.new_bits(num_samples)
    key = stream_key(config.seed, epoch, SALT_DROP)
    if config.ill_every_mutation:
        # Variant: every ill-matched candidate goes; the redundant ones follow the schedule.
        red_only = red_bits & ~ill_bits
        num_red = int(rho * bitset.popcount(red_only))
    if config.rule == "random":  # the same budget, drawn from all N
        count = (bitset.popcount(ill_bits) + num_red if config.ill_every_mutation
                 else int(rho * num_candidates))
        draw_subset(None, num_samples, count, key, drop)
    elif config.ill_every_mutation:
        draw_subset(red_only, num_samples, num_red, key, drop)
        drop |= ill_bits
    else:
        draw_subset(candidates, num_samples, int(rho * num_candidates), key, drop)
    return drop, num_candidates


def infobatch_bits(config: ScanConfig, epoch: int, num_samples: int, scores: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """(drop bits, weight bits, weight, |W|) of an InfoBatch pruning epoch."""
    ratio = config.infobatch_prune_ratio
    well = scores < scores.mean(dtype=np.float64)
    well_bits = np.packbits(well, bitorder="little")
    num_well = int(well.sum())
    drop = bitset.new_bits(num_samples)
    draw_subset(well_bits, num_samples, int(ratio * num_well),
                stream_key(config.seed, epoch, SALT_INFOBATCH), drop)
    return drop, well_bits & ~drop, 1.0 / (1.0 - ratio), num_well
