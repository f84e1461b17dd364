"""Resume is bit-exact from every epoch boundary, through state_dict() and through the store.

SPEC.md: "The same seed, config and loss stream give the same D' and the same kept set on
every rank, on every machine, and after a resume from any epoch boundary." Run A goes
uninterrupted; run B stops after each epoch in turn, is carried into a fresh pruner, and goes
on with the same stream: every later plan, D' and the whole epoch log must equal A's.
"""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from scan_core import ScanConfig, ScanPruner, ScanStateError
from tests.core.streams import LossStream, epoch_batches, run

N, B, E = 300, 50, 12
STREAM = LossStream(seed=41)

CONFIGS = {
    "scan": ScanConfig(seed=3),
    "scan-t2-asym": ScanConfig(seed=4, t_cos=2, rho_low=0.1, rho_high=0.45),
    "static": ScanConfig(rule="static", seed=5),
    "random": ScanConfig(rule="random", seed=6),
    "infobatch": ScanConfig(rule="infobatch", num_epochs=E, seed=7),
    "global-ema": ScanConfig(scope="global", global_ema=0.5, global_normalization="batch", seed=8),
    # target 0.12 scales both rho by 0.8 (not 1: a lost scale would go unnoticed)
    "target-tail": ScanConfig(seed=9, num_epochs=E, target_rate=0.12, full_tail_epochs=2),
    # a target past the cosine cycle's reach: D' at its cap and a schedule floor
    "target-floor": ScanConfig(seed=11, num_epochs=E, target_rate=0.45, warmup_epochs=1),
    "ill-every": ScanConfig(seed=10, ill_every_mutation=True, min_warmup_epochs=4),
}


def trace(pruner: ScanPruner, epochs: range) -> list[tuple]:
    """(fingerprint, kept ids, D' red, D' ill) per epoch of `epochs`."""
    out = []
    for r in run(pruner, epochs, STREAM, B):
        out.append((r.fingerprint, r.kept_ids, pruner.candidate_ids("redundant"),
                    pruner.candidate_ids("ill_matched")))
    return out


def assert_same(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x[0] == y[0]
        for u, v in zip(x[1:], y[1:]):
            np.testing.assert_array_equal(u, v)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def reference():
    out = {}
    for name, cfg in CONFIGS.items():
        pruner = ScanPruner(N, 2, cfg)
        out[name] = (trace(pruner, range(E)), pruner.log, pruner.state_dict())
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resume_from_state_dict_at_every_boundary(name, reference):
    cfg = CONFIGS[name]
    ref_trace, ref_log, ref_state = reference[name]
    assert any(t[1].shape[0] < N for t in ref_trace) or cfg.rule == "full"
    for boundary in range(1, E):
        first = ScanPruner(N, 2, cfg)
        run(first, boundary, STREAM, B)
        state = first.state_dict()
        resumed = ScanPruner.from_state_dict(state)
        assert resumed.next_epoch == boundary
        assert_same(trace(resumed, range(boundary, E)), ref_trace[boundary:])
        assert resumed.log == ref_log
        assert_same_state(resumed.state_dict(), ref_state)
        # load_state_dict into a pruner built by hand is the same path
        manual = ScanPruner(N, 2, cfg)
        manual.load_state_dict(state)
        assert_same(trace(manual, range(boundary, E)), ref_trace[boundary:])


@pytest.mark.parametrize("name", ["scan", "infobatch", "global-ema", "target-tail"])
def test_resume_from_the_store_at_every_boundary(name, reference, tmp_path):
    cfg = CONFIGS[name]
    ref_trace, ref_log, ref_state = reference[name]
    for boundary in range(1, E):
        path = tmp_path / f"b{boundary}.zarr"
        first = ScanPruner(N, 2, cfg, store=path)
        run(first, boundary, STREAM, B)
        del first
        reopened = ScanPruner(N, 2, cfg, store=path)
        assert reopened.next_epoch == boundary
        assert_same(trace(reopened, range(boundary, E)), ref_trace[boundary:])
        assert reopened.log == ref_log
        assert_same_state(reopened.state_dict(), ref_state)


def test_state_dict_is_a_copy():
    pruner = ScanPruner(N, 2, CONFIGS["scan"])
    run(pruner, 5, STREAM, B)
    state = pruner.state_dict()
    before = state["red_bits"].copy()
    run(pruner, range(5, 8), STREAM, B)
    np.testing.assert_array_equal(state["red_bits"], before)
    resumed = ScanPruner.from_state_dict(state)
    state["red_bits"][:] = 0  # the loaded pruner must not alias the dict it came from
    assert resumed.num_candidates > 0


# -- a lifecycle state machine against an uninterrupted reference ------------------------------

SM_N, SM_B, SM_E = 200, 40, 10
SM_CONFIG = ScanConfig(seed=13, rho_low=0.25, rho_high=0.3)
SM_STREAM = LossStream(seed=43)


def _sm_reference():
    pruner = ScanPruner(SM_N, 2, SM_CONFIG)
    fps, reds, ills, logs = [], [], [], []
    for e in range(SM_E):
        plan = pruner.plan_epoch(e)
        fps.append(plan.fingerprint)
        for ids in epoch_batches(plan, SM_B):
            pruner.record(ids, SM_STREAM(e, ids))
        pruner.end_epoch()
        reds.append(pruner.candidate_ids("redundant"))
        ills.append(pruner.candidate_ids("ill_matched"))
        logs.append(pruner.log)
    return fps, reds, ills, logs


class PrunerLifecycle(RuleBasedStateMachine):
    """plan / record / end / save / load / reopen in any order; the model is the list of what
    an uninterrupted pruner fed the same stream produced after each epoch."""

    reference = None

    @initialize()
    def setup(self):
        if PrunerLifecycle.reference is None:
            PrunerLifecycle.reference = _sm_reference()
        self.dir = tempfile.mkdtemp(prefix="scan-sm-")
        self.path = f"{self.dir}/run.zarr"
        self.pruner = ScanPruner(SM_N, 2, SM_CONFIG, store=self.path)
        self.has_store = True
        self.next_epoch = 0  # the model
        self.store_latest = -1
        self.saved: dict | None = None
        self.saved_epoch = None
        self.plan = None
        self.pending: list[np.ndarray] = []

    def teardown(self):
        shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)

    @precondition(lambda self: self.plan is None and self.next_epoch < SM_E)
    @rule()
    def plan_epoch(self):
        fps = self.reference[0]
        self.plan = self.pruner.plan_epoch(self.next_epoch)
        assert self.plan.fingerprint == fps[self.next_epoch]
        assert self.pruner.plan_epoch(self.next_epoch).fingerprint == fps[self.next_epoch]
        self.pending = epoch_batches(self.plan, SM_B)

    @precondition(lambda self: self.plan is not None and self.pending)
    @rule(count=st.integers(1, 3))
    def record_batches(self, count):
        for ids in self.pending[:count]:
            self.pruner.record(ids, SM_STREAM(self.next_epoch, ids))
        self.pending = self.pending[count:]

    @precondition(lambda self: self.plan is not None and not self.pending)
    @rule()
    def end_epoch(self):
        _, reds, ills, logs = self.reference
        e = self.next_epoch
        self.pruner.end_epoch()
        np.testing.assert_array_equal(self.pruner.candidate_ids("redundant"), reds[e])
        np.testing.assert_array_equal(self.pruner.candidate_ids("ill_matched"), ills[e])
        assert self.pruner.log == logs[e]
        self.plan = None
        self.next_epoch = e + 1
        if self.has_store:
            self.store_latest = max(self.store_latest, e)

    @precondition(lambda self: self.plan is not None)
    @rule()
    def state_dict_mid_epoch_is_refused(self):
        try:
            self.pruner.state_dict()
        except ScanStateError:
            return
        raise AssertionError("state_dict() inside an open epoch did not raise ScanStateError")

    @precondition(lambda self: self.plan is None)
    @rule()
    def save(self):
        self.saved = self.pruner.state_dict()
        self.saved_epoch = self.next_epoch

    @precondition(lambda self: self.plan is None and self.saved is not None)
    @rule(with_store=st.booleans())
    def load(self, with_store):
        store = self.path if with_store else None
        self.pruner = ScanPruner.from_state_dict(self.saved, store=store)
        self.has_store = with_store
        self.next_epoch = self.saved_epoch

    @precondition(lambda self: self.plan is None)
    @rule()
    def reopen_from_store(self):
        self.pruner = ScanPruner(SM_N, 2, SM_CONFIG, store=self.path)
        self.has_store = True
        # the store resumes from the newest epoch any pruner wrote to it: all runs here are
        # the same deterministic run, so every snapshot of epoch e is the reference state of e
        self.next_epoch = self.store_latest + 1

    @invariant()
    def next_epoch_matches(self):
        if hasattr(self, "pruner"):
            assert self.pruner.next_epoch == self.next_epoch


TestPrunerLifecycle = PrunerLifecycle.TestCase
TestPrunerLifecycle.settings = settings(max_examples=20, stateful_step_count=25, deadline=None)
