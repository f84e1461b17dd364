"""Pure schedule functions: phase of an epoch, rho_cur, the expected saving of a run.

No state here; these carry the property-based tests of SPEC.md ("What follows").

For e >= e0 (the first pruning epoch) let d = e - e0 and c = d mod (T + 1). c = 0 is a
preparation epoch (train on all N, build D'); c in 1..T is a mutation epoch that drops
floor(rho_cur * |D'|) samples of D', with rho_cur = 0.5 * (1 + cos(pi * (T - c) / T))
(paper Sec. 3.3; T = 3 gives 0.25, 0.75, 1.0).

`epoch_rho(..., floor=beta)` is the schedule a target rate steers (scan_core/target.py): a
mutation epoch drops beta + (1 - beta) * rho_cur of D' (beta = 0 is the paper's schedule).
"""

from __future__ import annotations

import math
from typing import Literal

from scan_core.errors import ScanConfigError, ScanTargetUnreachableError

Phase = Literal["warmup", "prepare", "mutate", "tail", "full"]


def rho_cur(c: int, t_cos: int) -> float:
    """The share of D' dropped at cycle position c (0 <= c <= t_cos).

    Computed so the symmetry rho_cur(c) + rho_cur(T - c) == 1 holds exactly in floating point:
    the larger of the pair comes from the cosine, the smaller as 1 minus it (exact by Sterbenz's
    lemma, as the larger lies in [1/2, 1]). Hence the mean over a cycle is exactly 1/2.

    >>> [rho_cur(c, 3) for c in range(4)]
    [0.0, 0.25, 0.75, 1.0]
    """
    if t_cos < 1:
        raise ScanConfigError(f"t_cos must be >= 1, got {t_cos}.")
    if not 0 <= c <= t_cos:
        raise ScanConfigError(f"cycle position c must lie in [0, {t_cos}], got {c}.")
    if 2 * c == t_cos:
        return 0.5
    if 2 * c > t_cos:
        return 0.5 * (1.0 + math.cos(math.pi * (t_cos - c) / t_cos))
    return 1.0 - rho_cur(t_cos - c, t_cos)


def cycle_position(epoch: int, e0: int | None, t_cos: int) -> int | None:
    """c = (epoch - e0) mod (T + 1), or None while warm-up has not ended before `epoch`."""
    if e0 is None or epoch < e0:
        return None
    return (epoch - e0) % (t_cos + 1)


def tail_start(num_epochs: int | None, full_tail_epochs: int) -> int | None:
    """First epoch of the full-data tail, or None without one."""
    if num_epochs is None or full_tail_epochs <= 0:
        return None
    return num_epochs - full_tail_epochs


def scan_phase(epoch: int, e0: int | None, t_cos: int, *,
               num_epochs: int | None = None, full_tail_epochs: int = 0) -> Phase:
    """Phase of `epoch` under the SCAN schedule, given e0 (None: warm-up still on)."""
    tail = tail_start(num_epochs, full_tail_epochs)
    if tail is not None and epoch >= tail:
        return "tail"
    c = cycle_position(epoch, e0, t_cos)
    if c is None:
        return "warmup"
    return "prepare" if c == 0 else "mutate"


def epoch_rho(epoch: int, e0: int | None, t_cos: int, *,
              num_epochs: int | None = None, full_tail_epochs: int = 0,
              floor: float = 0.0) -> float:
    """The share of D' dropped in `epoch`: floor + (1 - floor) * rho_cur in a mutation epoch
    (exactly rho_cur when floor = 0), 0 outside mutation epochs."""
    if scan_phase(epoch, e0, t_cos, num_epochs=num_epochs,
                  full_tail_epochs=full_tail_epochs) != "mutate":
        return 0.0
    c = cycle_position(epoch, e0, t_cos)
    assert c is not None  # a mutation epoch has a cycle position
    if floor == 0.0:
        return rho_cur(c, t_cos)
    return min(1.0, floor + (1.0 - floor) * rho_cur(c, t_cos))


def rho_sum(e0: int, num_epochs: int, t_cos: int, full_tail_epochs: int = 0,
            floor: float = 0.0) -> float:
    """Sum of the dropped share of D' over epochs e0..num_epochs-1 (the tail counts zero)."""
    return math.fsum(epoch_rho(e, e0, t_cos, num_epochs=num_epochs,
                               full_tail_epochs=full_tail_epochs, floor=floor)
                     for e in range(e0, num_epochs))


def mutation_epochs(e0: int, num_epochs: int, t_cos: int, full_tail_epochs: int = 0) -> int:
    """How many of the epochs e0..num_epochs-1 are mutation epochs."""
    return sum(scan_phase(e, e0, t_cos, num_epochs=num_epochs,
                          full_tail_epochs=full_tail_epochs) == "mutate"
               for e in range(e0, num_epochs))


def expected_saving(num_epochs: int, e0: int, t_cos: int, candidate_share: float,
                    full_tail_epochs: int = 0, floor: float = 0.0) -> float:
    """Expected share of all sample-visits a run saves: sum_e rho(e) * |D'|/N / E.

    With |D'| = candidate_share * N (per-batch floors aside). Over whole cycles and with no
    schedule floor this is (E - W) / E * candidate_share / 2, the figure SPEC.md derives.
    """
    if num_epochs < 1:
        raise ScanConfigError(f"num_epochs must be >= 1, got {num_epochs}.")
    if e0 >= num_epochs:
        return 0.0
    return candidate_share * rho_sum(e0, num_epochs, t_cos, full_tail_epochs, floor) / num_epochs


def solve_candidate_share(target_rate: float, num_epochs: int, e0: int, t_cos: int,
                          full_tail_epochs: int = 0, max_share: float = 1.0) -> float:
    """The candidate share |D'|/N that makes a run with warm-up ending at e0 save `target_rate`
    of all sample-visits. Raises ScanTargetUnreachableError above `max_share`.
    """
    weight = rho_sum(e0, num_epochs, t_cos, full_tail_epochs) / num_epochs if e0 < num_epochs else 0.0
    best = weight * max_share
    if weight <= 0.0 or target_rate > best + 1e-12:
        raise ScanTargetUnreachableError(
            f"target_rate={target_rate} cannot be reached: with warm-up ending before epoch {e0} "
            f"of {num_epochs}, T_cos={t_cos} and {full_tail_epochs} tail epoch(s), the schedule "
            f"saves at most {best:.4f} of sample-visits (D' capped at {max_share:.2f} of the "
            "data, and the cosine cycle keeps half of it on average). Lower target_rate, "
            "train more epochs, or end warm-up earlier (warmup_epochs / max_warmup_epochs).")
    return target_rate / weight

