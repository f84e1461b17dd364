"""A refused call leaves the pruner exactly as it was (issue 15, item 6).

Each public method is called wrongly at an interesting moment; it must raise a ScanError and
the pruner must then continue to the same plans and state as a pruner that was never misused.
A `RuleBasedStateMachine` interleaves valid calls with refused ones against the same reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from scan_core import ScanConfig, ScanError, ScanPruner
from tests.core.streams import LossStream, epoch_batches, run

N, B = 400, 50
STREAM = LossStream(seed=17)
CFG = ScanConfig(seed=5)
BAD_EPOCHS = [1.0, "1", None, True, np.float64(1.0), [1]]


def state_of(pruner: ScanPruner) -> dict:
    """The pruner's state as comparable plain values (arrays as bytes)."""
    return {k: (v.tobytes() if isinstance(v, np.ndarray) else v)
            for k, v in pruner.state_dict().items()}


def reference(epochs: int) -> ScanPruner:
    pruner = ScanPruner(N, 2, CFG)
    run(pruner, epochs, STREAM, B)
    return pruner


def finish_and_compare(pruner: ScanPruner, start: int, stop: int = 10) -> None:
    ref = reference(start)
    assert state_of(pruner) == state_of(ref)
    got = [r.fingerprint for r in run(pruner, stop, STREAM, B)]
    want = [r.fingerprint for r in run(ref, stop, STREAM, B)]
    assert got == want
    assert state_of(pruner) == state_of(ref)


@pytest.mark.parametrize("bad", BAD_EPOCHS, ids=repr)
@pytest.mark.parametrize("start", [1, 5])  # a warm-up boundary, and one inside the cycles
def test_plan_epoch_with_a_non_int_epoch_is_refused_and_changes_nothing(bad, start):
    """fails on main: plan_epoch(1.0) raised TypeError after opening a half-built epoch."""
    pruner = reference(start)
    with pytest.raises(ScanError, match="epoch must be an int"):
        pruner.plan_epoch(bad)
    finish_and_compare(pruner, start)


@pytest.mark.parametrize("bad", [-1, 3, 99])
def test_plan_epoch_of_the_wrong_epoch_changes_nothing(bad):
    pruner = reference(2)
    with pytest.raises(ScanError, match="next epoch of this run is 2"):
        pruner.plan_epoch(bad)
    finish_and_compare(pruner, 2)


def test_a_refused_record_changes_nothing_mid_epoch():
    pruner, ref = reference(7), reference(7)  # epoch 7: a preparation epoch
    plan, ref_plan = pruner.plan_epoch(7), ref.plan_epoch(7)
    assert plan.phase == "prepare"
    batches = epoch_batches(plan, B)
    for ids in batches[:3]:
        pruner.record(ids, STREAM.losses(7, ids))
        ref.record(ids, STREAM.losses(7, ids))
    ids = batches[3]
    good = STREAM.losses(7, ids)
    nan = good.copy()
    nan[1, -1] = np.nan
    for bad_ids, bad_losses in [(ids.astype(float), good), (ids, good[:1]), (ids, nan),
                                (np.r_[ids[:-1], ids[0]], good), (np.r_[ids[:-1], N], good)]:
        with pytest.raises(ScanError):
            pruner.record(bad_ids, bad_losses)
    for ids in batches[3:]:
        pruner.record(ids, STREAM.losses(7, ids))
        ref.record(ids, STREAM.losses(7, ids))
    assert pruner.end_epoch() == ref.end_epoch()
    finish_and_compare(pruner, 8)


def test_refused_calls_without_an_open_epoch_change_nothing():
    pruner = reference(3)
    for call in (lambda: pruner.end_epoch(), lambda: pruner.record([1], [[1.0], [1.0]]),
                 lambda: pruner.candidate_ids("neither")):
        with pytest.raises(ScanError):
            call()
    finish_and_compare(pruner, 3)


def _edited(state: dict, **changes) -> dict:
    return {**state, **changes}


@pytest.mark.parametrize("change", [
    {"next_epoch": "7"}, {"next_epoch": 7}, {"visits_kept": -1}, {"scale": "x"},
    {"log": [1, 2]}, {"warmup_e0": 1.5}, {"num_preparations": 50}, {"red_bits": np.zeros(3)},
], ids=lambda c: ",".join(c))
def test_a_refused_load_state_dict_changes_nothing(change):
    """fails on main: fields were assigned one by one, so a bad later field left the earlier
    ones loaded (and next_epoch 7 with a 3-row log was accepted)."""
    good = reference(6).state_dict()
    pruner = reference(3)
    with pytest.raises(ScanError):
        pruner.load_state_dict(_edited(good, **change))
    finish_and_compare(pruner, 3)


def test_a_failing_end_epoch_leaves_the_epoch_open_and_a_retry_matches(monkeypatch):
    """The agreement check (or anything after the candidates are combined) failing must not
    leave a half-closed epoch: the retry gives what an undisturbed end_epoch gives."""
    pruner, ref = reference(7), reference(7)
    for p in (pruner, ref):
        plan = p.plan_epoch(7)
        for ids in epoch_batches(plan, B):
            p.record(ids, STREAM.losses(7, ids))
    before = pruner.candidate_ids().copy()

    class Boom(Exception):
        pass

    def boom(*a, **k):
        raise Boom()

    # fail late: after the candidates were combined and warm-up and the visits were updated
    monkeypatch.setattr("scan_core.pruner.EpochSummary.as_dict", boom)
    with pytest.raises(Boom):
        pruner.end_epoch()
    monkeypatch.undo()
    assert pruner.next_epoch == 7 and pruner.log == ref.log
    np.testing.assert_array_equal(pruner.candidate_ids(), before)
    assert pruner.end_epoch() == ref.end_epoch()
    finish_and_compare(pruner, 8)


class MisuseMachine(RuleBasedStateMachine):
    """Valid steps advance both pruners; refused calls hit only one. They must stay equal."""

    def __init__(self) -> None:
        super().__init__()
        self.pruner, self.ref = ScanPruner(N, 2, CFG), ScanPruner(N, 2, CFG)

    @rule()
    def whole_epoch(self):
        for p in (self.pruner, self.ref):
            e = p.next_epoch
            plan = p.plan_epoch(e)
            for ids in epoch_batches(plan, B):
                p.record(ids, STREAM.losses(e, ids))
            p.end_epoch()

    @rule(bad=st.sampled_from(BAD_EPOCHS + [-1, 1000]))
    def bad_plan(self, bad):
        with pytest.raises(ScanError):
            self.pruner.plan_epoch(bad)

    @rule()
    def bad_end(self):
        with pytest.raises(ScanError):
            self.pruner.end_epoch()

    @rule(ids=st.sampled_from([[0.5], [N], [-1], [3, 3]]))
    def bad_record(self, ids):
        with pytest.raises(ScanError):
            self.pruner.record(ids, np.ones((2, len(ids))))

    @invariant()
    def same_state(self):
        assert state_of(self.pruner) == state_of(self.ref)


TestMisuseMachine = MisuseMachine.TestCase
TestMisuseMachine.settings = settings(max_examples=15, stateful_step_count=12, deadline=None)


def test_state_schema_2_requires_schedule_floor_and_schema_1_still_loads():
    """Issue 16: schedule_floor was added to the state without a version bump (read with
    .get). Schema 2 requires it; a schema-1 state (written before it) still resumes, with 0."""
    state = reference(6).state_dict()
    assert state["schema_version"] == 2
    without = {k: v for k, v in state.items() if k != "schedule_floor"}
    with pytest.raises(ScanError, match="schedule_floor"):
        ScanPruner(N, 2, CFG).load_state_dict(without)
    old = ScanPruner(N, 2, CFG)
    old.load_state_dict({**without, "schema_version": 1})
    assert old.schedule_floor == 0.0
    finish_and_compare(old, 6)
    with pytest.raises(ScanError, match="newer scan_core"):
        ScanPruner(N, 2, CFG).load_state_dict({**state, "schema_version": 3})
