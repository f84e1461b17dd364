"""A target rate: the share of all sample-visits the user names, and how a run lands on it.

At warm-up's end (e0 known) `solve_at_warmup_end` gives the per-end scale of rho_low/rho_high
and a schedule floor beta. The paper's cosine cycle is kept while it reaches the target (the
candidate share |D'|/N grows, beta = 0); it drops half of D' on average, so past D' at its cap
(rho_low + rho_high = 1) beta rises instead: each mutation epoch drops beta + (1 - beta) *
rho_cur of D'. The ceiling is all of D' dropped in every mutation epoch (warm-up and
preparation epochs always train on everything); above it the target is refused.

That solve assumes |D'| = share * N, which per-batch floors and the two-view top-up undercut
(up to 10%), so `floor_after_preparation` solves beta again at the end of every preparation
epoch from the counted savings and the |D'| just built: the run lands on the target.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

from scan_core.config import ScanConfig
from scan_core.errors import ScanTargetUnreachableError
from scan_core.schedule import (epoch_rho, expected_saving, mutation_epochs, rho_sum, scan_phase,
                                solve_candidate_share)



class TargetSolution(NamedTuple):
    """How a run lands on a target rate: |D'|/N (`share`) and the schedule floor beta."""

    share: float
    floor: float


def max_target_saving(num_epochs: int, e0: int, t_cos: int, full_tail_epochs: int = 0,
                      max_share: float = 1.0) -> float:
    """The most a run can save: D' at `max_share` dropped whole in every mutation epoch."""
    if e0 >= num_epochs:
        return 0.0
    return max_share * mutation_epochs(e0, num_epochs, t_cos, full_tail_epochs) / num_epochs


def solve_target(target_rate: float, num_epochs: int, e0: int, t_cos: int,
                 full_tail_epochs: int = 0, max_share: float = 1.0) -> TargetSolution:
    """(|D'|/N, floor) that make a run with warm-up ending at e0 save `target_rate` of all
    sample-visits.

    The paper's cosine schedule is kept as long as it can reach the target: the candidate share
    grows first (floor 0, `solve_candidate_share`). Past `max_share` it can grow no more, and the
    floor rises instead, linearly in the saving, until every mutation epoch drops all of D'.
    Above that (`max_target_saving`) raises ScanTargetUnreachableError: the warm-up and the
    preparation epochs train on all N, so no schedule of this shape saves more.
    """
    cosine_best = expected_saving(num_epochs, e0, t_cos, max_share, full_tail_epochs) \
        if e0 < num_epochs else 0.0
    if 0.0 < target_rate <= cosine_best:
        return TargetSolution(solve_candidate_share(target_rate, num_epochs, e0, t_cos,
                                                    full_tail_epochs, max_share), 0.0)
    best = max_target_saving(num_epochs, e0, t_cos, full_tail_epochs, max_share)
    if best <= 0.0 or target_rate > best * (1 + 1e-12):
        raise ScanTargetUnreachableError(
            f"target_rate={target_rate} cannot be reached: with warm-up ending before epoch {e0} "
            f"of {num_epochs}, T_cos={t_cos} and {full_tail_epochs} tail epoch(s), at most "
            f"{best:.4f} of sample-visits can be saved, dropping all of D' (capped at "
            f"{max_share:.2f} of the data) in every mutation epoch: warm-up and preparation "
            "epochs train on all samples. Lower target_rate, train more epochs, lengthen the "
            "cycle (t_cos: fewer preparation epochs) or end warm-up earlier.")
    # saving(floor) = cap * (floor * M + (1 - floor) * S) / E, linear in floor; M > S here.
    m = mutation_epochs(e0, num_epochs, t_cos, full_tail_epochs)
    s = rho_sum(e0, num_epochs, t_cos, full_tail_epochs)
    floor = (target_rate * num_epochs / max_share - s) / (m - s)
    return TargetSolution(max_share, min(1.0, max(0.0, floor)))


def check_reachable(config: ScanConfig, earliest_e0: int) -> None:
    """Refuse, at construction, a target even the earliest warm-up end cannot reach."""
    assert config.target_rate is not None and config.num_epochs is not None
    solve_target(config.target_rate, config.num_epochs, earliest_e0, config.t_cos,
                 config.full_tail_epochs)


def solve_at_warmup_end(config: ScanConfig, e0: int) -> tuple[float, float]:
    """(scale of rho_low and rho_high, floor) once warm-up has ended before epoch e0.

    If warm-up ran longer than the best case checked at construction, the run prunes at the
    ceiling (all of D' = N in every mutation epoch) and warns, rather than lose the run."""
    assert config.target_rate is not None and config.num_epochs is not None
    try:
        share, floor = solve_target(config.target_rate, config.num_epochs, e0, config.t_cos,
                                    config.full_tail_epochs)
    except ScanTargetUnreachableError as exc:
        warnings.warn(f"{exc} Pruning at the cap (all of D' = N in every mutation epoch) "
                      "instead.", stacklevel=4)
        share, floor = 1.0, 1.0
    return share / config.candidate_share, floor


def floor_after_preparation(config: ScanConfig, epoch: int, e0: int, saved_visits: int,
                            num_samples: int, num_candidates: int) -> float:
    """The floor for the epochs after preparation epoch `epoch` (see `retarget_floor`)."""
    assert config.target_rate is not None and config.num_epochs is not None
    return retarget_floor(config.target_rate, config.num_epochs, epoch, e0, config.t_cos,
                          config.full_tail_epochs, saved_visits, num_samples, num_candidates)


def retarget_floor(target_rate: float, num_epochs: int, epoch: int, e0: int, t_cos: int,
                   full_tail_epochs: int, saved_visits: int, num_samples: int,
                   num_candidates: int) -> float:
    """The floor that lands the run on `target_rate`, solved again at the end of preparation
    epoch `epoch` from what was counted: the visits saved so far and the |D'| just built.

    The solve at warm-up's end assumes |D'| = share * N; per-batch floors and the authors'
    two-view top-up leave it smaller (up to 10%), so an open-loop run falls short. Here the
    remaining epochs are asked to save what is left, D' assumed to keep its size: the floor is
    (need / |D'| - S) / (M - S) over the remaining mutation epochs (M of them, sum of rho_cur S),
    clamped to [0, 1]. Every rank holds the same counts, so every rank solves the same floor.
    """
    mutate = [epoch_rho(e, e0, t_cos, num_epochs=num_epochs, full_tail_epochs=full_tail_epochs)
              for e in range(epoch + 1, num_epochs)
              if scan_phase(e, e0, t_cos, num_epochs=num_epochs,
                            full_tail_epochs=full_tail_epochs) == "mutate"]
    if not mutate or num_candidates <= 0:
        return 0.0
    m, s = len(mutate), math.fsum(mutate)
    wanted = (target_rate * num_epochs * num_samples - saved_visits) / num_candidates
    if m - s <= 1e-12:  # T_cos = 1: the cycle already drops all of D'
        return 0.0
    return min(1.0, max(0.0, (wanted - s) / (m - s)))
