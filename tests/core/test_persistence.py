"""ill_persistence (issue 20, history-aware rule (a)): a sample is an ill-matched candidate only
when it was in the ill-matched end of that many consecutive preparation epochs.

Every preparation epoch trains on all N in an order fixed by (seed, epoch), so the raw ends of
a run do not depend on what earlier mutation epochs dropped: the expected candidates are the
paper run's ends AND-ed, computed here from a paper run, not from the code under test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_core import ScanConfig, ScanConfigError, ScanPruner, run_ranks
from tests.core.streams import LossStream, run, run_epoch

N, B, E = 300, 50, 13
STREAM = LossStream(seed=51)


def preparation_ends(config: ScanConfig, epochs: int = E, stream=STREAM, n: int = N):
    """{epoch: (redundant ids, ill ids)} after each preparation epoch, and the fingerprints."""
    pruner = ScanPruner(n, 2, config)
    ends, fps = {}, []
    for e in range(epochs):
        rec = run_epoch(pruner, e, stream, B)
        fps.append(rec.fingerprint)
        if rec.phase == "prepare":
            ends[e] = (pruner.candidate_ids("redundant"), pruner.candidate_ids("ill_matched"))
    return ends, fps


def test_the_default_is_the_paper_and_stores_written_before_the_field_still_match(tmp_path):
    from scan_core.state import check_state
    from scan_core.store import _compare_meta
    assert ScanConfig().ill_persistence == 1
    old = ScanConfig().to_dict()
    del old["ill_persistence"]  # a config written before the field existed
    meta = {"config": ScanConfig().to_dict(), "num_samples": N, "num_views": 2, "world_size": 1}
    _compare_meta("s.zarr", {**meta, "config": old}, meta)  # no ScanStoreMismatchError
    _compare_meta("s.zarr", {**meta, "config": old}, {**meta, "config": old})  # read_meta()
    pruner = ScanPruner(N, 2, ScanConfig())
    state = {**pruner.state_dict(), "config": old}
    check_state(state, config=ScanConfig().to_dict(), num_samples=N, num_views=2, world_size=1)
    # ...but not a run that asks for persistence.
    from scan_core import ScanResumeError, ScanStoreMismatchError
    two = ScanConfig(ill_persistence=2).to_dict()
    with pytest.raises(ScanStoreMismatchError, match="config.ill_persistence: store has 1"):
        _compare_meta("s.zarr", {**meta, "config": old}, {**meta, "config": two})
    with pytest.raises(ScanResumeError, match="state belongs to another run"):
        check_state(state, config=two, num_samples=N, num_views=2, world_size=1)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**20), persistence=st.integers(2, 3),
       rho_high=st.sampled_from([0.1, 0.3, 0.45]))
def test_ill_candidates_are_the_paper_ends_and_ed_over_consecutive_preparations(
        seed, persistence, rho_high):
    base = ScanConfig(seed=seed, rho_high=rho_high)
    paper, _ = preparation_ends(base)
    mine, _ = preparation_ends(base.replace(ill_persistence=persistence))
    preps = sorted(paper)
    assert preps == sorted(mine) and len(preps) >= 3
    for k, epoch in enumerate(preps):
        np.testing.assert_array_equal(mine[epoch][0], paper[epoch][0])  # redundant: unchanged
        if k + 1 < persistence:
            assert len(mine[epoch][1]) == 0
            continue
        want = paper[epoch][1]
        for back in range(1, persistence):
            want = np.intersect1d(want, paper[preps[k - back]][1])
        np.testing.assert_array_equal(mine[epoch][1], want)
    # Monotone in the persistence: a longer one keeps a subset.
    longer, _ = preparation_ends(base.replace(ill_persistence=persistence + 1))
    for epoch in preps:
        assert np.isin(longer[epoch][1], mine[epoch][1]).all()


def test_ill_persistence_one_is_bit_for_bit_the_paper_rule():
    paper, fps = preparation_ends(ScanConfig(seed=4))
    same, fps_same = preparation_ends(ScanConfig(seed=4, ill_persistence=1))
    assert fps == fps_same
    for epoch in paper:
        for a, b in zip(paper[epoch], same[epoch]):
            np.testing.assert_array_equal(a, b)


def test_a_run_resumed_from_its_store_plans_exactly_as_one_never_stopped(tmp_path):
    cfg = ScanConfig(seed=9, ill_persistence=2)
    _, fps = preparation_ends(cfg)
    path = tmp_path / "run.zarr"
    for stop in (5, 9):  # after the first and the second preparation epoch's mutations
        first = ScanPruner(N, 2, cfg, store=path)
        run(first, stop, STREAM, B)
        first.close()
        resumed = ScanPruner(N, 2, cfg, store=path)
        assert resumed.next_epoch == stop
        assert resumed.state_dict()["ill_prev_bits"].shape == (1, (N + 7) // 8)
        got = [r.fingerprint for r in run(resumed, E, STREAM, B)]
        assert got == fps[stop:]
        resumed.close()
        path = tmp_path / f"run{stop}.zarr"


def test_a_state_without_its_previous_ends_is_refused(tmp_path):
    from scan_core import ScanResumeError
    cfg = ScanConfig(seed=9, ill_persistence=2)
    pruner = ScanPruner(N, 2, cfg)
    run(pruner, 5, STREAM, B)
    state = pruner.state_dict()
    del state["ill_prev_bits"]
    with pytest.raises(ScanResumeError, match="ill_prev_bits"):
        ScanPruner(N, 2, cfg).load_state_dict(state)


def test_every_rank_holds_the_same_candidates_and_plans():
    n = 403
    cfg = ScanConfig(seed=5, ill_persistence=2)

    def body(comm):
        pruner = ScanPruner(n, 2, cfg, communicator=comm)
        out = []
        for e in range(E):
            r = run_epoch(pruner, e, STREAM, 25, rank=comm.rank, world_size=comm.world_size)
            out.append((r.fingerprint, pruner.candidate_ids("ill_matched").tolist()))
        return out

    results = run_ranks(3, body)
    assert results[0] == results[1] == results[2]
    assert any(ill for _, ill in results[0])


@pytest.mark.parametrize("kw, match", [
    ({"ill_persistence": 0}, "ill_persistence"),
    ({"ill_persistence": 2.0}, "ill_persistence"),
    ({"ill_persistence": True}, "ill_persistence"),
    ({"ill_persistence": 2, "rule": "static"}, r"needs a rule that rebuilds D'.*'static'"),
    ({"ill_persistence": 2, "rule": "infobatch", "num_epochs": 10}, "'infobatch'"),
])
def test_bad_persistence_is_a_typed_error_naming_the_value(kw, match):
    with pytest.raises(ScanConfigError, match=match):
        ScanConfig(**kw)
