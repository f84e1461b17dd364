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
Each rule is one row of the table RULES (name -> its schedule, its mutation drop, whether it
rebuilds D'); the pruner looks a rule up there instead of testing its name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from scan_core import bitset
from scan_core.config import ScanConfig
from scan_core.schedule import Phase, epoch_rho, scan_phase
from scan_core.select import SALT_DROP, SALT_INFOBATCH, draw_subset, stream_key

# (drop bits or None, weight bits or None, weight, number of samples the drop was drawn from)
Drop = tuple["np.ndarray | None", "np.ndarray | None", float, int]


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one rule decides, as functions (the table RULES maps each name to one).

    phase_and_rho(config, epoch, e0, floor) -> (phase, share of D' dropped): the epoch's phase
      and rate (rho_cur raised by a target rate's floor; infobatch: its prune ratio r).
    mutation_drop(config, epoch, rho, num_samples, red_bits, ill_bits, scores) -> Drop: what a
      "mutate" epoch drops and reweights.
    rebuilds_candidates(num_preparations) -> bool: does a "prepare" epoch rebuild D'?
    """

    phase_and_rho: Callable[[ScanConfig, int, "int | None", float], tuple[Phase, float]]
    mutation_drop: Callable[..., Drop]
    rebuilds_candidates: Callable[[int], bool]


def _scan_schedule(config: ScanConfig, epoch: int, e0: int | None,
                   floor: float) -> tuple[Phase, float]:
    kw = {"num_epochs": config.num_epochs, "full_tail_epochs": config.full_tail_epochs}
    return (scan_phase(epoch, e0, config.t_cos, **kw),
            epoch_rho(epoch, e0, config.t_cos, floor=floor, **kw))


def _full_schedule(config: ScanConfig, epoch: int, e0: int | None,
                   floor: float) -> tuple[Phase, float]:
    return "full", 0.0


def _infobatch_schedule(config: ScanConfig, epoch: int, e0: int | None,
                        floor: float) -> tuple[Phase, float]:
    assert config.num_epochs is not None  # ScanConfig enforces it for infobatch
    if epoch == 0:
        return "warmup", 0.0
    if epoch < config.infobatch_delta * config.num_epochs:
        return "mutate", config.infobatch_prune_ratio
    return "tail", 0.0


def _scan_drop(config: ScanConfig, epoch: int, rho: float, num_samples: int,
               red_bits: np.ndarray, ill_bits: np.ndarray, scores: np.ndarray | None) -> Drop:
    """scan / static: floor(rho * |D'|) of D', drawn uniformly (or, with ill_every_mutation,
    every ill-matched candidate and rho of the redundant ones)."""
    candidates = red_bits | ill_bits
    num_candidates = bitset.popcount(candidates)
    drop = bitset.new_bits(num_samples)
    key = stream_key(config.seed, epoch, SALT_DROP)
    if config.ill_every_mutation:
        red_only = red_bits & ~ill_bits
        draw_subset(red_only, num_samples, int(rho * bitset.popcount(red_only)), key, drop)
        drop |= ill_bits
    else:
        draw_subset(candidates, num_samples, int(rho * num_candidates), key, drop)
    return drop, None, 1.0, num_candidates


def _random_drop(config: ScanConfig, epoch: int, rho: float, num_samples: int,
                 red_bits: np.ndarray, ill_bits: np.ndarray, scores: np.ndarray | None) -> Drop:
    """random: as many as SCAN would drop, drawn uniformly from all N."""
    num_candidates = bitset.popcount(red_bits | ill_bits)
    if config.ill_every_mutation:
        count = bitset.popcount(ill_bits) + int(rho * bitset.popcount(red_bits & ~ill_bits))
    else:
        count = int(rho * num_candidates)
    drop = bitset.new_bits(num_samples)
    draw_subset(None, num_samples, count, stream_key(config.seed, epoch, SALT_DROP), drop)
    return drop, None, 1.0, num_candidates


def _infobatch_drop(config: ScanConfig, epoch: int, rho: float, num_samples: int,
                    red_bits: np.ndarray, ill_bits: np.ndarray,
                    scores: np.ndarray | None) -> Drop:
    """infobatch: floor(r * |W|) of the below-mean samples W; the rest of W weighted 1/(1-r)."""
    assert scores is not None
    ratio = config.infobatch_prune_ratio
    well = scores < scores.mean(dtype=np.float64)
    well_bits = np.packbits(well, bitorder="little")
    num_well = int(well.sum())
    drop = bitset.new_bits(num_samples)
    draw_subset(well_bits, num_samples, int(ratio * num_well),
                stream_key(config.seed, epoch, SALT_INFOBATCH), drop)
    return drop, well_bits & ~drop, 1.0 / (1.0 - ratio), num_well


def _never_drop(*args: object) -> Drop:
    return None, None, 1.0, 0


RULES: dict[str, Rule] = {
    "scan": Rule(_scan_schedule, _scan_drop, lambda num_preparations: True),
    "static": Rule(_scan_schedule, _scan_drop, lambda num_preparations: num_preparations == 0),
    "random": Rule(_scan_schedule, _random_drop, lambda num_preparations: True),
    "full": Rule(_full_schedule, _never_drop, lambda num_preparations: False),
    "infobatch": Rule(_infobatch_schedule, _infobatch_drop, lambda num_preparations: False),
}


def phase_and_rho(config: ScanConfig, epoch: int, e0: int | None,
                  floor: float = 0.0) -> tuple[Phase, float]:
    """Phase of `epoch` and the share of D' it drops (see Rule.phase_and_rho)."""
    return RULES[config.rule].phase_and_rho(config, epoch, e0, floor)


def collects_candidates(config: ScanConfig, phase: str, num_preparations: int) -> bool:
    """Whether this epoch rebuilds D' (a preparation epoch of a rule that does)."""
    return phase == "prepare" and RULES[config.rule].rebuilds_candidates(num_preparations)


def mutation_drop(config: ScanConfig, epoch: int, rho: float, num_samples: int,
                  red_bits: np.ndarray, ill_bits: np.ndarray,
                  scores: np.ndarray | None) -> Drop:
    """What a mutation epoch of `config.rule` drops (see Rule.mutation_drop)."""
    return RULES[config.rule].mutation_drop(config, epoch, rho, num_samples, red_bits, ill_bits,
                                            scores)
