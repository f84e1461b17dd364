"""Property tests of the warm-up plateau detector (SPEC.md, phase 1) against a tiny model.

The model below is written from SPEC.md alone: at the end of epoch e with mean loss L_e, if
e > 0 and (L_prev - L_e) / (L_prev + eps) < T_td, pruning starts at e0 = e + 1; otherwise
L_prev = L_e. Guards: e0 >= min_warmup_epochs (a plateau before that is ignored and L_prev
moves on), e0 <= max_warmup_epochs (pruning starts then at the latest), and a fixed
warmup_epochs override.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from scan_core.config import ScanConfig
from scan_core.warmup import WarmupState, earliest_e0, end_of_epoch, initial_warmup

EPS = 1e-8  # SPEC.md's eps; the relative-drop test is computed the same way in the model


def model_e0(losses, threshold, min_warmup=0, max_warmup=None, fixed=None):
    """e0 after feeding `losses` epoch by epoch (None: warm-up still on)."""
    if fixed is not None:
        return fixed
    if max_warmup == 0:
        return 0
    prev = math.inf
    for e, loss in enumerate(losses):
        start = e + 1
        if e > 0 and (prev - loss) / (prev + EPS) < threshold and start >= min_warmup:
            return start
        if max_warmup is not None and start >= max_warmup:
            return start
        prev = loss
    return None


def run_detector(losses, config):
    """Feed the real detector; returns (e0, list of states after each epoch)."""
    state = initial_warmup(config)
    states = []
    for e, loss in enumerate(losses):
        if not state.active:
            break
        state = end_of_epoch(state, e, loss, config)
        states.append(state)
    return state.e0, states


loss_st = st.floats(min_value=1e-3, max_value=20.0, allow_nan=False, allow_infinity=False)
losses_st = st.lists(loss_st, min_size=0, max_size=30)
threshold_st = st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3, 0.5, 1.0, 2.0]) | st.floats(0.0, 3.0)


@st.composite
def guards(draw):
    lo = draw(st.integers(min_value=0, max_value=12))
    hi = draw(st.one_of(st.none(), st.integers(min_value=lo, max_value=20)))
    return lo, hi


@st.composite
def decaying_losses(draw):
    """A loss curve that falls fast then flattens: the shape the detector is made for."""
    start = draw(st.floats(min_value=1.0, max_value=10.0))
    drops = draw(st.lists(st.floats(min_value=0.0, max_value=0.9), min_size=1, max_size=30))
    out, loss = [], start
    for d in drops:
        out.append(loss)
        loss = loss * (1.0 - d)
    return out


@given(losses_st | decaying_losses(), threshold_st)
def test_plateau_rule_matches_model(losses, threshold):
    """Without guards, e0 is the model's: the first e > 0 whose relative drop is below T_td."""
    cfg = ScanConfig(warmup_threshold=threshold)
    assert run_detector(losses, cfg)[0] == model_e0(losses, threshold)


@given(losses_st | decaying_losses(), threshold_st, guards())
def test_guards_match_model(losses, threshold, bounds):
    """With min/max_warmup_epochs, e0 is the model's for every loss sequence."""
    lo, hi = bounds
    cfg = ScanConfig(warmup_threshold=threshold, min_warmup_epochs=lo, max_warmup_epochs=hi)
    assert run_detector(losses, cfg)[0] == model_e0(losses, threshold, lo, hi)


@given(st.lists(loss_st, min_size=1, max_size=1), threshold_st)
def test_first_epoch_never_ends_warmup(losses, threshold):
    """Epoch 0 never ends warm-up, whatever its loss (L_prev starts as +inf in effect)."""
    cfg = ScanConfig(warmup_threshold=threshold)
    state = end_of_epoch(WarmupState(), 0, losses[0], cfg)
    assert state.active and state.e0 is None
    assert state.prev_loss == losses[0]


@given(loss_st, st.floats(min_value=0.0, max_value=1.0), threshold_st)
def test_relative_drop_below_threshold_ends_at_next_epoch(prev, drop, threshold):
    """After epoch e > 0, a relative drop below T_td sets e0 = e + 1; otherwise L_prev = L_e
    and warm-up goes on."""
    loss = prev * (1.0 - drop)
    cfg = ScanConfig(warmup_threshold=threshold)
    state = end_of_epoch(WarmupState(prev_loss=prev), 4, loss, cfg)
    if (prev - loss) / (prev + EPS) < threshold:
        assert state.e0 == 5
    else:
        assert state.e0 is None and state.prev_loss == loss


@given(st.integers(min_value=1, max_value=20), threshold_st)
def test_rising_loss_is_a_plateau(epoch, threshold):
    """A loss that goes up (negative drop) is below any T_td >= 0: warm-up ends."""
    cfg = ScanConfig(warmup_threshold=threshold)
    state = end_of_epoch(WarmupState(prev_loss=1.0), epoch, 1.5, cfg)
    assert state.e0 == epoch + 1


@given(losses_st | decaying_losses(), threshold_st, guards())
def test_e0_respects_min_and_max(losses, threshold, bounds):
    """Whenever warm-up ends, min_warmup_epochs <= e0 <= max_warmup_epochs, and e0 is at most
    one past the last epoch fed."""
    lo, hi = bounds
    cfg = ScanConfig(warmup_threshold=threshold, min_warmup_epochs=lo, max_warmup_epochs=hi)
    e0, states = run_detector(losses, cfg)
    if e0 is not None:
        if hi != 0:
            assert e0 >= lo
            assert e0 <= len(states)
        if hi is not None:
            assert e0 <= hi


@given(st.integers(min_value=0, max_value=25))
def test_max_warmup_epochs_forces_start(hi):
    """With a loss that never plateaus (halving every epoch, a drop of 0.5 is never below
    T_td = 0), pruning starts exactly at max_warmup_epochs."""
    cfg = ScanConfig(warmup_threshold=0.0, max_warmup_epochs=hi)
    losses = [10.0 * 0.5 ** e for e in range(hi + 5)]
    assert run_detector(losses, cfg)[0] == hi


@given(st.integers(min_value=0, max_value=25), losses_st | decaying_losses(), threshold_st)
def test_warmup_epochs_override(fixed, losses, threshold):
    """A fixed warmup_epochs is e0 from the start, whatever the losses and other guards."""
    cfg = ScanConfig(warmup_threshold=threshold, warmup_epochs=fixed, max_warmup_epochs=30)
    assert initial_warmup(cfg).e0 == fixed
    assert run_detector(losses, cfg)[0] == fixed


@given(losses_st, threshold_st, guards())
def test_detector_is_frozen_after_end(losses, threshold, bounds):
    """Once e0 is set, end_of_epoch returns the state unchanged."""
    lo, hi = bounds
    cfg = ScanConfig(warmup_threshold=threshold, min_warmup_epochs=lo, max_warmup_epochs=hi)
    done = WarmupState(prev_loss=1.0, e0=7)
    for e, loss in enumerate(losses):
        assert end_of_epoch(done, e, loss, cfg) == done


def test_max_warmup_zero_prunes_from_epoch_zero():
    """max_warmup_epochs=0 means e0 = 0, known before any epoch."""
    cfg = ScanConfig(max_warmup_epochs=0)
    assert initial_warmup(cfg).e0 == 0
    assert earliest_e0(cfg) == 0


@given(threshold_st, guards(), st.one_of(st.none(), st.integers(min_value=0, max_value=20)))
def test_earliest_e0_is_a_lower_bound_that_is_reached(threshold, bounds, fixed):
    """earliest_e0(cfg) <= e0 for every loss sequence, and a rising loss curve (a plateau at
    the first chance) reaches it exactly."""
    lo, hi = bounds
    cfg = ScanConfig(warmup_threshold=threshold, min_warmup_epochs=lo, max_warmup_epochs=hi,
                     warmup_epochs=fixed)
    rising = [1.0 + e for e in range(40)]
    assert run_detector(rising, cfg)[0] == earliest_e0(cfg)


@given(losses_st | decaying_losses(), threshold_st, guards())
def test_earliest_e0_bounds_every_run(losses, threshold, bounds):
    """No loss sequence ends warm-up before earliest_e0(cfg)."""
    lo, hi = bounds
    cfg = ScanConfig(warmup_threshold=threshold, min_warmup_epochs=lo, max_warmup_epochs=hi)
    e0 = run_detector(losses, cfg)[0]
    if e0 is not None:
        assert e0 >= earliest_e0(cfg)


def test_earliest_e0_default_is_two():
    """Without guards the plateau test first runs at the end of epoch 1, so e0 >= 2."""
    assert earliest_e0(ScanConfig()) == 2
    assert earliest_e0(ScanConfig(max_warmup_epochs=1)) == 1
    assert earliest_e0(ScanConfig(min_warmup_epochs=5)) == 5


def test_worked_example():
    """Losses 10, 6, 4.5, 4.2 with T_td = 0.3: drops 0.4, 0.25 -> e0 = 3 (end of epoch 2)."""
    cfg = ScanConfig(warmup_threshold=0.3)
    assert run_detector([10.0, 6.0, 4.5, 4.2], cfg)[0] == 3
    # min_warmup_epochs=4 ignores that plateau; the drop 4.5 -> 4.2 (0.067) then ends it.
    cfg = ScanConfig(warmup_threshold=0.3, min_warmup_epochs=4)
    assert run_detector([10.0, 6.0, 4.5, 4.2], cfg)[0] == 4


def test_active_property():
    """WarmupState.active is True exactly while e0 is None."""
    assert WarmupState().active
    assert not WarmupState(e0=3).active
