"""retire_share (issue 20, history-aware rule (c)): at each preparation epoch the ill-matched
candidates with the highest epoch-wide z-scored loss are retired for the rest of the run, until
retire_share * N are. Expected values come from the loss stream and numpy here, not from the
code under test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_core import ScanConfig, ScanConfigError, ScanPruner, run_ranks
from tests.core.streams import LossStream, run, run_epoch

N, B, E = 300, 50, 13
STREAM = LossStream(seed=51)


def retired_ids(pruner) -> np.ndarray:
    bits = pruner.state_dict()["retired_bits"]
    return np.flatnonzero(np.unpackbits(bits, count=pruner.num_samples, bitorder="little"))


def z_of(losses: np.ndarray) -> np.ndarray:
    """Independent z: per view over all samples (all seen), then the mean over views."""
    x = losses.astype(np.float64)
    return ((x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-8)).mean(0)


def test_the_first_preparation_retires_the_top_ill_candidates_by_epoch_z():
    cfg = ScanConfig(seed=3, retire_share=0.05)
    pruner = ScanPruner(N, 2, cfg)
    for e in range(E):
        rec = run_epoch(pruner, e, STREAM, B)
        if rec.phase == "prepare":
            break
    ill = pruner.candidate_ids("ill_matched")
    z = z_of(np.asarray(STREAM.losses(e, np.arange(N)), np.float32))
    want = np.sort(ill[np.lexsort((ill, -z[ill]))][:int(0.05 * N)])
    np.testing.assert_array_equal(retired_ids(pruner), want)
    assert len(want) == 15


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**20), share=st.sampled_from([0.02, 0.05, 0.1, 0.3]))
def test_retired_only_grow_stay_under_the_cap_and_are_never_served_again(seed, share):
    pruner = ScanPruner(N, 2, ScanConfig(seed=seed, retire_share=share))
    cap, before = int(share * N), np.array([], int)
    for e in range(E):
        rec = run_epoch(pruner, e, STREAM, B)
        assert not np.isin(before, rec.kept_ids).any()  # retired earlier: not in this epoch
        now = retired_ids(pruner)
        assert np.isin(before, now).all() and len(now) <= cap
        if rec.phase == "prepare":
            assert np.isin(now, np.union1d(before, pruner.candidate_ids("ill_matched"))).all()
        before = now
    assert len(before) == cap  # three preparations of 90 ill candidates fill any cap here


def test_retire_share_zero_is_bit_for_bit_the_paper_rule():
    a = [r.fingerprint for r in run(ScanPruner(N, 2, ScanConfig(seed=4)), E, STREAM, B)]
    b = [r.fingerprint for r in run(ScanPruner(N, 2, ScanConfig(seed=4, retire_share=0.0)), E,
                                    STREAM, B)]
    assert a == b
    assert "retired_bits" not in ScanPruner(N, 2, ScanConfig()).state_dict()


def test_a_run_resumed_from_its_store_plans_exactly_as_one_never_stopped(tmp_path):
    cfg = ScanConfig(seed=9, retire_share=0.1, ill_persistence=2)
    fps = [r.fingerprint for r in run(ScanPruner(N, 2, cfg), E, STREAM, B)]
    for stop in (4, 7, 11):
        path = tmp_path / f"run{stop}.zarr"
        first = ScanPruner(N, 2, cfg, store=path)
        run(first, stop, STREAM, B)
        first.close()
        resumed = ScanPruner(N, 2, cfg, store=path)
        assert [r.fingerprint for r in run(resumed, E, STREAM, B)] == fps[stop:]
        resumed.close()


def test_every_rank_holds_the_same_retired_set_and_plans():
    cfg = ScanConfig(seed=5, retire_share=0.1)

    def body(comm):
        pruner = ScanPruner(403, 2, cfg, communicator=comm)
        out = []
        for e in range(E):
            r = run_epoch(pruner, e, STREAM, 25, rank=comm.rank, world_size=comm.world_size)
            out.append((r.fingerprint, retired_ids(pruner).tolist()))
        return out

    results = run_ranks(3, body)
    assert results[0] == results[1] == results[2] and results[0][-1][1]


@pytest.mark.parametrize("kw, match", [
    ({"retire_share": -0.1}, r"retire_share must lie in \[0.0, 1.0\)"),
    ({"retire_share": 1.0}, r"retire_share must lie in \[0.0, 1.0\)"),
    ({"retire_share": "0.1"}, "retire_share must be a finite real number"),
    ({"retire_share": 0.1, "rule": "random"}, r"needs rule=\"scan\", got rule='random'"),
])
def test_bad_retire_share_is_a_typed_error_naming_the_value(kw, match):
    with pytest.raises(ScanConfigError, match=match):
        ScanConfig(**kw)


def test_candidate_ids_retired_names_the_retired_set_and_is_empty_without_the_rule():
    """candidate_ids("retired") (882c984) must survive the pruner's split: it was lost on main
    by the merge 6fe45fb ("end must be 'both', 'redundant' or 'ill_matched', got 'retired'")."""
    pruner = ScanPruner(N, 2, ScanConfig(seed=3, retire_share=0.05))
    plain = ScanPruner(N, 2, ScanConfig(seed=3))
    for e in range(E):
        rec = run_epoch(pruner, e, STREAM, B)
        run_epoch(plain, e, STREAM, B)
        if rec.phase == "prepare":
            break
    np.testing.assert_array_equal(pruner.candidate_ids("retired"), retired_ids(pruner))
    assert len(pruner.candidate_ids("retired")) == int(0.05 * N)
    assert plain.candidate_ids("retired").size == 0
    with pytest.raises(ScanConfigError, match="'ill_matched' or 'retired', got 'gone'"):
        pruner.candidate_ids("gone")
