"""Property tests of scan_core.schedule against SPEC.md ("Phases" and "What follows").

Each test states its invariant in the docstring; inputs are built with explicit bounds.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from scan_core.errors import ScanConfigError, ScanTargetUnreachableError
from scan_core.schedule import (cycle_position, epoch_rho, expected_saving, mutation_epochs,
                                rho_cur, rho_sum, scan_phase, solve_candidate_share)
from scan_core.target import max_target_saving, solve_target

# T_cos up to 10_000: strict monotonicity needs 0.5 * (1 + cos(pi / T)) < 1 in float64, which
# holds for T below about 2e8; realistic runs use T of a handful.
t_cos_st = st.integers(min_value=1, max_value=10_000)
small_t_st = st.integers(min_value=1, max_value=50)


@st.composite
def t_and_c(draw, t_strategy=t_cos_st):
    t = draw(t_strategy)
    return t, draw(st.integers(min_value=0, max_value=t))


@given(t_and_c())
def test_rho_cur_lies_in_unit_interval(tc):
    """0 <= rho_cur(c, T) <= 1 for every 0 <= c <= T."""
    t, c = tc
    assert 0.0 <= rho_cur(c, t) <= 1.0


@given(t_cos_st)
def test_rho_cur_endpoints(t):
    """rho_cur(0, T) == 0 and rho_cur(T, T) == 1 exactly."""
    assert rho_cur(0, t) == 0.0
    assert rho_cur(t, t) == 1.0


@given(t_and_c(st.integers(min_value=2, max_value=10_000)).filter(lambda tc: tc[1] < tc[0]))
def test_rho_cur_strictly_increasing(tc):
    """rho_cur(c, T) < rho_cur(c + 1, T) (for T up to 10_000, see t_cos_st)."""
    t, c = tc
    assert rho_cur(c, t) < rho_cur(c + 1, t)


@given(st.integers(min_value=1, max_value=2_000))
def test_rho_cur_increasing_over_whole_cycle(t):
    """The whole sequence rho_cur(0..T, T) is strictly increasing (every c at once)."""
    seq = [rho_cur(c, t) for c in range(t + 1)]
    assert all(a < b for a, b in zip(seq, seq[1:]))


@given(t_and_c())
def test_rho_cur_symmetry_is_exact(tc):
    """rho_cur(c) + rho_cur(T - c) == 1 exactly in floating point."""
    t, c = tc
    assert rho_cur(c, t) + rho_cur(t - c, t) == 1.0


@given(st.integers(min_value=1, max_value=5_000))
def test_cycle_mean_is_exactly_half(t):
    """The mean of rho_cur over c = 0..T is exactly 1/2 for every T (SPEC.md)."""
    assert math.fsum(rho_cur(c, t) for c in range(t + 1)) / (t + 1) == 0.5


@given(t_and_c())
def test_rho_cur_matches_cosine_formula(tc):
    """rho_cur(c, T) == 0.5 * (1 + cos(pi * (T - c) / T)) within 1e-12 (paper Sec. 3.3)."""
    t, c = tc
    assert abs(rho_cur(c, t) - 0.5 * (1.0 + math.cos(math.pi * (t - c) / t))) <= 1e-12


def test_rho_cur_t3_values():
    """T = 3 gives 0, 0.25, 0.75, 1.0 (SPEC.md's worked example)."""
    assert [rho_cur(c, 3) for c in range(4)] == pytest.approx([0.0, 0.25, 0.75, 1.0], abs=1e-15)


def test_rho_cur_t1_and_t2_values():
    """T = 1 gives 0, 1; T = 2 gives 0, 0.5, 1."""
    assert [rho_cur(c, 1) for c in range(2)] == [0.0, 1.0]
    assert [rho_cur(c, 2) for c in range(3)] == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("t", [0, -1, -7])
def test_rho_cur_rejects_bad_t_cos(t):
    """t_cos < 1 raises ScanConfigError naming t_cos."""
    with pytest.raises(ScanConfigError, match="t_cos"):
        rho_cur(0, t)


@given(st.integers(min_value=1, max_value=100), st.integers(min_value=1, max_value=100))
def test_rho_cur_rejects_c_outside_cycle(t, offset):
    """c < 0 or c > T raises ScanConfigError."""
    with pytest.raises(ScanConfigError):
        rho_cur(-offset, t)
    with pytest.raises(ScanConfigError):
        rho_cur(t + offset, t)


@given(small_t_st, st.integers(min_value=0, max_value=100), st.integers(min_value=0, max_value=500))
def test_epoch_rho_has_period_t_plus_1(t, e0, d):
    """For epochs e >= e0, epoch_rho(e) == epoch_rho(e + T + 1) (no tail)."""
    e = e0 + d
    assert epoch_rho(e + t + 1, e0, t) == epoch_rho(e, e0, t)


@given(small_t_st, st.integers(min_value=0, max_value=100), st.integers(min_value=0, max_value=500))
def test_epoch_rho_is_rho_cur_of_cycle_position(t, e0, d):
    """epoch_rho(e0 + d) == rho_cur(d mod (T + 1), T)."""
    assert epoch_rho(e0 + d, e0, t) == rho_cur(d % (t + 1), t)


@given(small_t_st, st.integers(min_value=0, max_value=100), st.integers(min_value=0, max_value=200))
def test_epoch_rho_zero_outside_mutation(t, e0, e):
    """epoch_rho is 0 during warm-up (e < e0, or e0 unknown) and at preparation epochs."""
    if e < e0:
        assert epoch_rho(e, e0, t) == 0.0
    assert epoch_rho(e, None, t) == 0.0
    assert epoch_rho(e0 + (t + 1) * (e % 5), e0, t) == 0.0


def _phase_model(epoch, e0, t, num_epochs, tail):
    """SPEC.md's phases, written plainly: tail first, then warm-up, then c = 0 or not."""
    if num_epochs is not None and tail > 0 and epoch >= num_epochs - tail:
        return "tail"
    if e0 is None or epoch < e0:
        return "warmup"
    return "prepare" if (epoch - e0) % (t + 1) == 0 else "mutate"


@st.composite
def phase_case(draw):
    t = draw(small_t_st)
    e0 = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=60)))
    num_epochs = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=120)))
    tail = draw(st.integers(min_value=0, max_value=(num_epochs - 1) if num_epochs else 5))
    epoch = draw(st.integers(min_value=0, max_value=150))
    return epoch, e0, t, num_epochs, tail


@given(phase_case())
def test_scan_phase_matches_model(case):
    """warmup before e0 (or while e0 is None), prepare at c = 0, mutate at c in 1..T, tail in
    the last full_tail_epochs epochs (which win over every other phase)."""
    epoch, e0, t, num_epochs, tail = case
    got = scan_phase(epoch, e0, t, num_epochs=num_epochs, full_tail_epochs=tail)
    assert got == _phase_model(epoch, e0, t, num_epochs, tail)


@given(phase_case())
def test_epoch_rho_positive_exactly_in_mutation(case):
    """epoch_rho > 0 exactly in the epochs scan_phase calls "mutate"; 0 in warmup, prepare and
    tail epochs (tail included: full data at the end of a run)."""
    epoch, e0, t, num_epochs, tail = case
    kw = {"num_epochs": num_epochs, "full_tail_epochs": tail}
    if scan_phase(epoch, e0, t, **kw) != "mutate":
        assert epoch_rho(epoch, e0, t, **kw) == 0.0
    else:
        assert epoch_rho(epoch, e0, t, **kw) > 0.0


@given(small_t_st, st.integers(min_value=0, max_value=50), st.integers(min_value=0, max_value=50))
def test_cycle_position(t, e0, e):
    """cycle_position is None before e0 and (e - e0) mod (T + 1) from e0 on."""
    want = None if e < e0 else (e - e0) % (t + 1)
    assert cycle_position(e, e0, t) == want
    assert cycle_position(e, None, t) is None


@given(small_t_st, st.integers(min_value=0, max_value=60), st.integers(min_value=1, max_value=20),
       st.floats(min_value=0.0, max_value=1.0))
def test_expected_saving_over_whole_cycles(t, w, cycles, share):
    """With E - W a whole number of cycles, expected_saving == (E - W) / E * share / 2."""
    e = w + cycles * (t + 1)
    want = (e - w) / e * share / 2
    assert math.isclose(expected_saving(e, w, t, share), want, rel_tol=1e-12, abs_tol=1e-15)


@given(small_t_st, st.integers(min_value=1, max_value=60), st.integers(min_value=0, max_value=80),
       st.floats(min_value=0.0, max_value=1.0))
def test_expected_saving_is_mean_of_epoch_rho(t, e, w, share):
    """expected_saving == share * sum_e epoch_rho(e) / E for any E and e0 (0 when e0 >= E)."""
    want = share * math.fsum(epoch_rho(x, w, t) for x in range(e)) / e
    assert math.isclose(expected_saving(e, w, t, share), want, rel_tol=1e-12, abs_tol=1e-15)


def test_expected_saving_rejects_no_epochs():
    """num_epochs < 1 raises ScanConfigError naming num_epochs."""
    with pytest.raises(ScanConfigError, match="num_epochs"):
        expected_saving(0, 0, 3, 0.6)


@st.composite
def reachable_target(draw):
    t = draw(small_t_st)
    e = draw(st.integers(min_value=2, max_value=200))
    w = draw(st.integers(min_value=0, max_value=e - 2))  # leaves at least one mutation epoch
    tail = draw(st.integers(min_value=0, max_value=max(0, e - w - 2)))
    cap = draw(st.floats(min_value=0.05, max_value=1.0))
    return t, e, w, tail, cap


@given(reachable_target(), st.floats(min_value=1e-3, max_value=1.0))
def test_solve_candidate_share_inverts_expected_saving(case, fraction):
    """For a target up to the cap's saving, expected_saving(solve(target)) == target and the
    solved share lies in (0, cap]."""
    t, e, w, tail, cap = case
    best = expected_saving(e, w, t, cap, tail)
    assume(best > 0.0)
    target = fraction * best
    share = solve_candidate_share(target, e, w, t, tail, max_share=cap)
    assert 0.0 < share <= cap * (1 + 1e-9)
    assert math.isclose(expected_saving(e, w, t, share, tail), target, rel_tol=1e-9)


@given(reachable_target(), st.floats(min_value=1e-6, max_value=10.0))
def test_solve_candidate_share_raises_above_cap(case, excess):
    """A target above what the capped share saves raises ScanTargetUnreachableError."""
    t, e, w, tail, cap = case
    best = expected_saving(e, w, t, cap, tail)
    target = best * (1 + excess) + 1e-9
    assume(target < 1.0)
    with pytest.raises(ScanTargetUnreachableError, match="target_rate"):
        solve_candidate_share(target, e, w, t, tail, max_share=cap)


@given(small_t_st, st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=20))
def test_solve_candidate_share_raises_when_warmup_eats_run(t, e, extra):
    """With e0 >= E nothing is ever pruned: any positive target is unreachable."""
    with pytest.raises(ScanTargetUnreachableError):
        solve_candidate_share(0.01, e, e + extra, t)


def test_unreachable_is_a_config_error():
    """ScanTargetUnreachableError is a ScanConfigError (and a ValueError)."""
    with pytest.raises(ScanConfigError):
        solve_candidate_share(0.9, 10, 2, 3)
    with pytest.raises(ValueError):
        solve_candidate_share(0.9, 10, 2, 3)


@given(small_t_st, st.integers(min_value=0, max_value=30), st.integers(min_value=1, max_value=60))
def test_rho_sum_counts_whole_cycles_as_half(t, w, cycles):
    """rho_sum over m whole cycles is exactly m * (T + 1) / 2."""
    e = w + cycles * (t + 1)
    assert rho_sum(w, e, t) == cycles * (t + 1) / 2


# -- the schedule floor of a target rate beyond the cosine cycle (SPEC: rates above 50%) -------

@given(t_and_c(small_t_st), st.floats(min_value=0.0, max_value=1.0))
def test_floored_rho_is_the_mix_and_stays_a_schedule(tc, floor):
    """In a mutation epoch the dropped share is floor + (1 - floor) * rho_cur: it lies in
    [rho_cur, 1], equals rho_cur exactly at floor 0, is 1 at c = T, rises with c, and is 0 in
    preparation epochs whatever the floor."""
    t, c = tc
    e0 = 3
    epoch = e0 + c
    value = epoch_rho(epoch, e0, t, floor=floor)
    if c == 0:
        assert value == 0.0
        return
    assert value == pytest.approx(floor + (1 - floor) * rho_cur(c, t), abs=1e-15)
    assert rho_cur(c, t) - 1e-15 <= value <= 1.0
    assert epoch_rho(epoch, e0, t, floor=0.0) == rho_cur(c, t)
    assert epoch_rho(e0 + t, e0, t, floor=floor) == 1.0
    if c < t:
        assert epoch_rho(epoch + 1, e0, t, floor=floor) >= value


@given(reachable_target(), st.floats(min_value=1e-3, max_value=1.0))
def test_solve_target_lands_on_every_reachable_target(case, fraction):
    """For any target up to the most a run can save (all of D' at the cap in every mutation
    epoch), expected_saving(share, floor) == target; the floor is 0 exactly when the cosine
    cycle reaches the target, and otherwise the share sits at the cap."""
    t, e, w, tail, cap = case
    best = max_target_saving(e, w, t, tail, cap)
    assume(best > 0.0)
    target = fraction * best
    share, floor = solve_target(target, e, w, t, tail, max_share=cap)
    assert 0.0 < share <= cap * (1 + 1e-9)
    assert 0.0 <= floor <= 1.0
    assert math.isclose(expected_saving(e, w, t, share, tail, floor), target, rel_tol=1e-9)
    cosine_best = expected_saving(e, w, t, cap, tail)
    if target <= cosine_best:
        assert floor == 0.0
    else:
        assert share == cap and floor > 0.0


@given(reachable_target(), st.floats(min_value=1e-6, max_value=10.0))
def test_solve_target_raises_above_the_most_a_run_saves(case, excess):
    """The warm-up and preparation epochs train on everything: a target above
    cap * (mutation epochs) / E is refused, naming the target and the reachable maximum."""
    t, e, w, tail, cap = case
    best = max_target_saving(e, w, t, tail, cap)
    target = best * (1 + excess) + 1e-9
    assume(target < 1.0)
    with pytest.raises(ScanTargetUnreachableError, match=f"target_rate={target}"):
        solve_target(target, e, w, t, tail, max_share=cap)


def test_rates_above_half_are_reachable_with_a_long_enough_cycle():
    """The issue's 50% and 70% rates over 12 epochs with one warm-up epoch: T_cos = 3 reaches
    50% (8 mutation epochs of 12) but not 70%; T_cos = 5 reaches both (9 of 12)."""
    assert mutation_epochs(1, 12, 3) == 8 and mutation_epochs(1, 12, 5) == 9
    share, floor = solve_target(0.5, 12, 1, 3)
    assert share == 1.0 and 0.0 < floor < 1.0
    with pytest.raises(ScanTargetUnreachableError, match="0.6667"):
        solve_target(0.7, 12, 1, 3)
    share, floor = solve_target(0.7, 12, 1, 5)
    assert share == 1.0
    assert expected_saving(12, 1, 5, share, 0, floor) == pytest.approx(0.7)
