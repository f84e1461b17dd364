"""ScanPruner over whole runs: the schedule, the kept sets, the candidates, every rule.

Expected values come from SPEC.md computed here (or in tests/core/streams.py) from the loss
stream, never from the pruner's own output: the warm-up end from the plateau rule applied to
the stream's epoch means, rho_cur from the cosine formula, the candidates from per-batch sorts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scan_core import ScanConfig, ScanPruner, ScanTargetUnreachableError
from tests.core.streams import (LossStream, full_epoch_mean, plateau_e0, rho_cur_formula, run,
                                run_epoch)

N, B, E = 1000, 100, 12
STREAM = LossStream(seed=3)


def expected_e0(stream: LossStream, num_samples: int, threshold: float = 0.3) -> int:
    e0 = plateau_e0([full_epoch_mean(stream, e, num_samples) for e in range(20)], threshold)
    assert e0 is not None and 2 <= e0 < 6  # the stream is built to plateau early
    return e0


def scan_run(config: ScanConfig, stream: LossStream = STREAM, num_samples: int = N,
             epochs: int = E, batch_size: int = B, **kw):
    pruner = ScanPruner(num_samples, stream.num_views, config)
    return pruner, run(pruner, epochs, stream, batch_size, **kw)


def dropped(record, num_samples: int = N) -> np.ndarray:
    return np.setdiff1d(np.arange(num_samples), record.kept_ids)


# -- schedule ----------------------------------------------------------------------------------

@pytest.mark.parametrize("t_cos", [1, 2, 3])
def test_phases_follow_the_schedule_after_warmup_ends(t_cos):
    pruner, recs = scan_run(ScanConfig(t_cos=t_cos, seed=5))
    e0 = expected_e0(STREAM, N)
    assert pruner.warmup_ended_at == e0
    for r in recs:
        if r.epoch < e0:
            assert (r.phase, r.rho_cur) == ("warmup", 0.0), r.epoch
            continue
        c = (r.epoch - e0) % (t_cos + 1)
        assert r.phase == ("prepare" if c == 0 else "mutate"), r.epoch
        assert r.rho_cur == pytest.approx(rho_cur_formula(c, t_cos), abs=1e-12)
    assert [r.summary.warmup_ended_at for r in recs] == [
        None if r.epoch < e0 - 1 else e0 for r in recs]


def test_mutation_epoch_trains_on_exactly_n_minus_floor_rho_dprime_distinct_samples():
    _, recs = scan_run(ScanConfig(seed=11))
    e0 = expected_e0(STREAM, N)
    mutations = [r for r in recs if r.phase == "mutate"]
    assert len(mutations) >= 5
    for r in mutations:
        d_prime = r.candidates_before
        assert len(d_prime) > 0
        rho = rho_cur_formula((r.epoch - e0) % 4, 3)
        expected = N - math.floor(rho * len(d_prime) + 1e-9)
        assert r.num_kept == expected
        assert len(r.kept_ids) == expected
        visited = np.concatenate(r.batches)
        assert len(visited) == expected and len(np.unique(visited)) == expected
        # every dropped sample is a candidate; D' is not rebuilt by a mutation epoch
        assert np.isin(dropped(r), d_prime).all()
        np.testing.assert_array_equal(r.candidates_after, d_prime)


def test_drop_is_drawn_afresh_each_mutation_epoch():
    # static keeps D' fixed, so two epochs at the same cycle position differ only by the draw
    _, recs = scan_run(ScanConfig(rule="static", seed=2), epochs=16)
    quarter = [dropped(r) for r in recs if r.phase == "mutate" and r.rho_cur == 0.25]
    assert len(quarter) >= 2 and len(quarter[0]) == len(quarter[1]) > 0
    assert not np.array_equal(quarter[0], quarter[1])


def test_nothing_pruned_means_every_id():
    _, recs = scan_run(ScanConfig(seed=4))
    for r in recs:
        if r.phase in ("warmup", "prepare"):
            np.testing.assert_array_equal(r.kept_ids, np.arange(N))
            assert r.num_kept == N and r.plan.num_pruned == 0


def test_realised_saving_equals_counted_visits():
    _, recs = scan_run(ScanConfig(seed=6))
    visits = 0
    for i, r in enumerate(recs):
        visits += sum(len(b) for b in r.batches)
        counted = 1.0 - visits / (N * (i + 1))
        assert r.summary.realised_saving == pytest.approx(counted, rel=0, abs=1e-12)
    assert recs[-1].summary.realised_saving > 0.1


def test_plan_epoch_is_idempotent_for_the_open_epoch():
    pruner = ScanPruner(N, 2, ScanConfig(seed=1))
    run(pruner, 5, STREAM, B)
    plan = pruner.plan_epoch(5)
    again = pruner.plan_epoch(5)
    assert again is plan or again.fingerprint == plan.fingerprint
    np.testing.assert_array_equal(again.kept_ids, plan.kept_ids)
    assert plan.phase == "mutate" and plan.num_kept < N
    ids = plan.kept_ids[:10]
    pruner.record(ids, STREAM.losses(5, ids))
    assert pruner.plan_epoch(5).fingerprint == plan.fingerprint


# -- candidates --------------------------------------------------------------------------------

def _ends(losses: np.ndarray, k: int, lowest: bool) -> list[set[int]]:
    out = []
    for row in losses:
        order = np.argsort(row, kind="stable")
        out.append(set((order[:k] if lowest else order[len(row) - k:]).tolist()))
    return out


def check_end_against_batches(chosen: np.ndarray, batches, epoch, stream, rho, lowest):
    """SPEC.md candidates: per batch, each view's k = floor(rho * B) extreme positions; the
    intersection always, topped up to exactly k from the union when it holds < 0.9 k."""
    chosen = set(chosen.tolist())
    union_all: set[int] = set()
    for ids in batches:
        k = math.floor(rho * len(ids) + 1e-9)
        per_view = _ends(stream.losses(epoch, ids), k, lowest)
        inter = set.intersection(*per_view)
        union = set.union(*per_view)
        got = {p for p, i in enumerate(ids.tolist()) if i in chosen}
        assert inter <= got <= union
        assert len(got) == (k if len(inter) < 0.9 * k else len(inter))
        union_all |= set(ids[sorted(got)].tolist())
    assert union_all == chosen


def test_candidates_are_the_per_batch_ends_of_the_last_preparation_epoch():
    pruner, recs = scan_run(ScanConfig(seed=8, rho_low=0.2, rho_high=0.35))
    preps = [r for r in recs if r.phase == "prepare"]
    assert len(preps) >= 2
    for r in recs:  # only a preparation epoch changes D'
        if r.phase != "prepare":
            np.testing.assert_array_equal(r.candidates_after, r.candidates_before)
    assert not np.array_equal(preps[0].candidates_after, preps[1].candidates_after)
    last = preps[-1]
    red, ill = pruner.candidate_ids("redundant"), pruner.candidate_ids("ill_matched")
    check_end_against_batches(red, last.batches, last.epoch, STREAM, 0.2, lowest=True)
    check_end_against_batches(ill, last.batches, last.epoch, STREAM, 0.35, lowest=False)
    np.testing.assert_array_equal(pruner.candidate_ids(), np.union1d(red, ill))
    np.testing.assert_array_equal(pruner.candidate_ids("both"), pruner.candidate_ids())
    assert pruner.num_candidates == len(pruner.candidate_ids())


def test_candidates_with_one_view_are_exactly_the_batch_ends():
    stream = LossStream(seed=9, num_views=1)
    pruner, recs = scan_run(ScanConfig(seed=1), stream=stream, epochs=8)
    last = [r for r in recs if r.phase == "prepare"][-1]
    red, ill = set(), set()
    for ids in last.batches:
        order = ids[np.argsort(stream.losses(last.epoch, ids)[0], kind="stable")]
        k = math.floor(0.3 * len(ids) + 1e-9)
        red |= set(order[:k].tolist())
        ill |= set(order[len(ids) - k:].tolist())
    assert set(pruner.candidate_ids("redundant").tolist()) == red
    assert set(pruner.candidate_ids("ill_matched").tolist()) == ill


def test_coreset_is_the_complement_of_dprime():
    pruner, _ = scan_run(ScanConfig(seed=3))
    core = pruner.coreset()
    cands = pruner.candidate_ids()
    assert len(np.intersect1d(core, cands)) == 0
    np.testing.assert_array_equal(np.union1d(core, cands), np.arange(N))
    assert np.all(np.diff(core) > 0)
    assert 0 < len(core) < N


@pytest.mark.parametrize("mode, kept_end, empty_end", [
    ("redundant", "redundant", "ill_matched"), ("ill_matched", "ill_matched", "redundant")])
def test_single_end_modes_collect_only_that_end(mode, kept_end, empty_end):
    both, both_recs = scan_run(ScanConfig(seed=12))
    one, one_recs = scan_run(ScanConfig(seed=12, mode=mode))
    assert one.warmup_ended_at == both.warmup_ended_at
    assert len(one.candidate_ids(empty_end)) == 0
    # per preparation epoch, the one end equals what "both" collected at that end
    np.testing.assert_array_equal(one.candidate_ids(kept_end), both.candidate_ids(kept_end))
    np.testing.assert_array_equal(one.candidate_ids(), both.candidate_ids(kept_end))
    for a, b in zip(one_recs, both_recs):
        if a.phase == "mutate":
            assert np.isin(dropped(a), a.candidates_before).all()
            assert len(a.candidates_before) < len(b.candidates_before)


# -- baselines ---------------------------------------------------------------------------------

def test_full_never_prunes():
    pruner, recs = scan_run(ScanConfig(rule="full", seed=1))
    for r in recs:
        assert r.num_kept == N and r.rho_cur == 0.0
        np.testing.assert_array_equal(r.kept_ids, np.arange(N))
    assert recs[-1].summary.realised_saving == 0.0
    assert pruner.num_candidates == 0


def test_random_drops_scans_count_but_from_all_samples():
    scan, scan_recs = scan_run(ScanConfig(seed=21))
    rnd, rnd_recs = scan_run(ScanConfig(rule="random", seed=21))
    outside = 0
    for s, r in zip(scan_recs, rnd_recs):
        assert (s.phase, s.num_kept) == (r.phase, r.num_kept), s.epoch
        np.testing.assert_array_equal(s.candidates_after, r.candidates_after)
        assert len(np.unique(r.kept_ids)) == r.num_kept
        if r.phase == "mutate":
            outside += int((~np.isin(dropped(r), r.candidates_before)).sum())
    assert outside > 0
    assert rnd_recs[-1].summary.realised_saving == scan_recs[-1].summary.realised_saving


def test_random_matches_the_ill_every_mutation_budget():
    """With the variant's flag, random drops what SCAN-with-the-flag drops (all ill-matched
    candidates plus rho_cur of the redundant-only ones), counted on the same loss stream."""
    flag, flag_recs = scan_run(ScanConfig(seed=23, ill_every_mutation=True))
    paper, paper_recs = scan_run(ScanConfig(seed=23))
    rnd, rnd_recs = scan_run(ScanConfig(rule="random", seed=23, ill_every_mutation=True))
    for f, p, r in zip(flag_recs, paper_recs, rnd_recs):
        assert (f.phase, f.num_kept) == (r.phase, r.num_kept), f.epoch
        np.testing.assert_array_equal(f.candidates_after, r.candidates_after)
    assert any(f.num_kept < p.num_kept for f, p in zip(flag_recs, paper_recs))
    assert rnd_recs[-1].summary.realised_saving == flag_recs[-1].summary.realised_saving


def test_static_freezes_dprime_after_the_first_preparation_while_scan_rebuilds_it():
    scan, scan_recs = scan_run(ScanConfig(seed=31), epochs=16)
    static, static_recs = scan_run(ScanConfig(rule="static", seed=31), epochs=16)
    preps = [i for i, r in enumerate(static_recs) if r.phase == "prepare"]
    assert len(preps) >= 3
    first = static_recs[preps[0]].candidates_after
    for r in static_recs[preps[0]:]:
        np.testing.assert_array_equal(r.candidates_after, first)
        if r.phase == "mutate":
            assert np.isin(dropped(r), first).all()
    np.testing.assert_array_equal(scan_recs[preps[0]].candidates_after, first)
    assert any(not np.array_equal(scan_recs[i].candidates_after, first) for i in preps[1:])


def test_infobatch_drops_below_mean_samples_and_reweights_the_rest():
    num_epochs, ratio, delta = 10, 0.4, 0.75
    cfg = ScanConfig(rule="infobatch", num_epochs=num_epochs, infobatch_prune_ratio=ratio,
                     infobatch_delta=delta, seed=5)
    pruner = ScanPruner(N, 2, cfg)
    scores = np.full(N, np.inf, np.float32)  # each sample's last mean-over-views loss
    pruned_epochs = 0
    for e in range(num_epochs):
        r = run_epoch(pruner, e, STREAM, B)
        plan = r.plan
        if e == 0 or e >= delta * num_epochs:
            assert r.num_kept == N
            np.testing.assert_array_equal(plan.loss_weights(np.arange(N)), np.ones(N))
        else:
            pruned_epochs += 1
            below = np.flatnonzero(scores < scores.mean(dtype=np.float64))
            drop = dropped(r)
            assert np.isin(drop, below).all()
            assert len(drop) == math.floor(ratio * len(below))
            w = plan.loss_weights(np.arange(N))
            kept_below = np.setdiff1d(below, drop)
            np.testing.assert_allclose(w[kept_below], 1.0 / (1.0 - ratio), rtol=1e-6)
            np.testing.assert_array_equal(w[np.setdiff1d(np.arange(N), kept_below)], 1.0)
        for ids in r.batches:
            scores[ids] = np.asarray(STREAM.losses(e, ids), np.float32).mean(axis=0)
    assert pruned_epochs == math.ceil(delta * num_epochs) - 1


def test_ill_every_mutation_drops_all_ill_candidates_each_mutation_epoch():
    pruner, recs = scan_run(ScanConfig(seed=14, ill_every_mutation=True))
    mutations = [r for r in recs if r.phase == "mutate"]
    assert mutations
    ill_by_epoch = {}
    check = ScanPruner(N, 2, ScanConfig(seed=14, ill_every_mutation=True))
    for r in recs:
        ill_by_epoch[r.epoch] = check.candidate_ids("ill_matched")
        red_only = np.setdiff1d(check.candidate_ids("redundant"), ill_by_epoch[r.epoch])
        rr = run_epoch(check, r.epoch, STREAM, B)
        assert rr.fingerprint == r.fingerprint
        if r.phase == "mutate":
            ill = ill_by_epoch[r.epoch]
            drop = dropped(r)
            assert len(ill) > 0 and np.isin(ill, drop).all()
            assert np.isin(drop, r.candidates_before).all()
            assert len(drop) == len(ill) + math.floor(r.rho_cur * len(red_only) + 1e-9)


def test_full_tail_epochs_train_on_full_data_at_the_end():
    tail = 3
    cfg = ScanConfig(seed=1, num_epochs=E, full_tail_epochs=tail)
    _, recs = scan_run(cfg)
    for r in recs[-tail:]:
        assert r.phase == "tail" and r.num_kept == N
        np.testing.assert_array_equal(r.kept_ids, np.arange(N))
    assert any(r.num_kept < N for r in recs[:-tail])


# -- scope="global" ----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::scan_core.ScanCoverageWarning")  # skips samples on purpose
def test_global_scope_ranks_all_seen_samples_at_once():
    stream = LossStream(seed=17, identical_views=True)  # intersection is exact: no top-up
    cfg = ScanConfig(seed=2, scope="global", rho_low=0.25, rho_high=0.15)
    pruner = ScanPruner(N, 2, cfg)
    skip = lambda ids: ids[ids % 7 != 3]  # noqa: E731 - some samples go unseen
    recs = run(pruner, 8, stream, B, skip=skip)
    last = [r for r in recs if r.phase == "prepare"][-1]
    seen = np.sort(np.concatenate(last.batches))
    m = len(seen)
    assert m < N
    values = np.asarray(stream.losses(last.epoch, seen), np.float32).mean(axis=0)
    order = seen[np.argsort(values, kind="stable")]
    k_low, k_high = math.floor(0.25 * m), math.floor(0.15 * m)
    np.testing.assert_array_equal(pruner.candidate_ids("redundant"), np.sort(order[:k_low]))
    np.testing.assert_array_equal(pruner.candidate_ids("ill_matched"),
                                  np.sort(order[m - k_high:]))


# -- target rate -------------------------------------------------------------------------------

def _weight(e0: int, num_epochs: int, t_cos: int) -> tuple[float, int]:
    """(sum of rho_cur over the run / E, number of mutation epochs), from the formula."""
    rhos = [rho_cur_formula((e - e0) % (t_cos + 1), t_cos) for e in range(e0, num_epochs)]
    return sum(rhos) / num_epochs, sum(1 for r in rhos if r > 0)


@pytest.mark.parametrize("target", [0.12, 0.17, 0.23])
def test_target_rate_lands_near_the_target(target):
    """With identical views the per-batch intersection is exact, so |D'| = sum over batches of
    floor(rho_low * B) + floor(rho_high * B): each end loses < 1 sample per batch to its floor,
    and each mutation epoch < 1 more to floor(rho_cur * |D'|). The realised saving therefore
    lies in [target - weight * 2 * batches / N - mutations / (N * E), target], where weight is
    the run's mean rho_cur (the schedule's own share, computed here from the formula)."""
    n, num_epochs, batch = 2000, 16, 100
    stream = LossStream(seed=23, identical_views=True)
    cfg = ScanConfig(seed=4, num_epochs=num_epochs, target_rate=target)
    pruner = ScanPruner(n, 2, cfg)
    recs = run(pruner, num_epochs, stream, batch)
    e0 = expected_e0(stream, n)
    assert pruner.warmup_ended_at == e0
    weight, mutations = _weight(e0, num_epochs, cfg.t_cos)
    realised = recs[-1].summary.realised_saving
    slack = weight * 2 * (n // batch) / n + mutations / (n * num_epochs)
    assert target - slack - 1e-12 <= realised <= target + 1e-12
    assert pruner.rho_low / pruner.rho_high == pytest.approx(cfg.rho_low / cfg.rho_high)


def test_target_rate_with_two_noisy_views_stays_within_the_topup_slack():
    """Two disagreeing views: an end of a batch holds between ceil(0.9 k) and k samples (the
    authors' top-up rule), so |D'| may fall 10% (plus floors) below the solved share."""
    n, num_epochs, batch, target = 2000, 16, 100, 0.2
    cfg = ScanConfig(seed=4, num_epochs=num_epochs, target_rate=target)
    pruner = ScanPruner(n, 2, cfg)
    recs = run(pruner, num_epochs, STREAM, batch)
    weight, mutations = _weight(expected_e0(STREAM, n), num_epochs, cfg.t_cos)
    realised = recs[-1].summary.realised_saving
    slack = 0.1 * target + weight * 4 * (n // batch) / n + mutations / (n * num_epochs)
    assert target - slack <= realised <= target + 1e-12


def test_unreachable_target_is_refused_at_construction():
    """Refused only above the most any schedule saves: all of D' (= N at the cap) dropped in
    every mutation epoch, with warm-up ending at its earliest (e0 = 2)."""
    num_epochs, t_cos = 10, 3
    _, mutations = _weight(2, num_epochs, t_cos)
    best = mutations / num_epochs
    ScanPruner(N, 2, ScanConfig(num_epochs=num_epochs, target_rate=best - 0.01))
    with pytest.raises(ScanTargetUnreachableError, match=f"{best:.4f}"):
        ScanPruner(N, 2, ScanConfig(num_epochs=num_epochs, target_rate=best + 0.02))
    _, fixed_mutations = _weight(6, num_epochs, t_cos)
    with pytest.raises(ScanTargetUnreachableError):
        ScanPruner(N, 2, ScanConfig(num_epochs=num_epochs, warmup_epochs=6,
                                    target_rate=fixed_mutations / num_epochs + 0.01))


@pytest.mark.parametrize("target,t_cos", [(0.45, 3), (0.5, 3), (0.7, 5)])
def test_target_rate_above_the_cosine_reach_raises_a_floor_and_lands(target, t_cos):
    """SPEC: rates above 50% work. Past what the cosine cycle saves with D' at the cap, every
    mutation epoch drops floor + (1 - floor) * rho_cur of D' (floor solved once warm-up ends).
    With identical views |D'| = N exactly (even batch, both ends at 1/2), so the realised saving
    is the target up to one sample per mutation epoch lost to floor(rho * |D'|)."""
    n, num_epochs, batch = 2000, 12, 100
    stream = LossStream(seed=23, identical_views=True)
    cfg = ScanConfig(seed=4, num_epochs=num_epochs, target_rate=target, warmup_epochs=1,
                     t_cos=t_cos)
    pruner = ScanPruner(n, 2, cfg)
    recs = run(pruner, num_epochs, stream, batch)
    assert pruner.rho_low + pruner.rho_high == pytest.approx(1.0)
    for rec in recs:
        s = rec.summary
        if s.phase == "mutate":
            floor = s.schedule_floor
            assert 0.0 < floor <= 1.0
            c = (s.epoch - 1) % (t_cos + 1)
            assert s.rho_cur == pytest.approx(floor + (1 - floor) * rho_cur_formula(c, t_cos))
            assert s.num_candidates == n
            assert s.num_kept == n - int(s.rho_cur * n)
        else:
            assert s.num_kept == n
    mutations = sum(rec.summary.phase == "mutate" for rec in recs)
    realised = recs[-1].summary.realised_saving
    assert target - mutations / (n * num_epochs) - 1e-12 <= realised <= target + 1e-12


@pytest.mark.parametrize("target,t_cos", [(0.2, 3), (0.45, 3), (0.6, 5)])
def test_target_rate_with_noisy_views_is_corrected_at_each_preparation(target, t_cos):
    """Two disagreeing views leave |D'| up to 10% below the solved share (the top-up rule), so
    an open-loop solve falls short. The floor is solved again at the end of every preparation
    epoch from the counted savings and the |D'| just built: the run lands on the target up to
    the floors of the last cycle (one sample per batch per end, one per mutation epoch)."""
    n, num_epochs, batch = 2000, 12, 100
    cfg = ScanConfig(seed=4, num_epochs=num_epochs, target_rate=target, warmup_epochs=1,
                     t_cos=t_cos)
    pruner = ScanPruner(n, 2, cfg)
    recs = run(pruner, num_epochs, STREAM, batch)
    assert any(r.summary.num_candidates < n * pruner.rho_low * 2 * 0.99 for r in recs)
    realised = recs[-1].summary.realised_saving
    slack = (t_cos * 2 * (n // batch) + t_cos) / (n * num_epochs)
    assert target - slack <= realised <= target + 1e-9


def test_warmup_longer_than_the_best_case_prunes_at_the_ceiling_and_warns():
    """Construction checks the target against the earliest warm-up end (e0 = 2). When the
    plateau comes later (e0 = 3 for this stream) the target is out of reach: the run warns,
    naming the target, and prunes all of D' (scale to the cap, floor 1) in every mutation epoch."""
    n, num_epochs, batch = 2000, 12, 100
    e0 = expected_e0(STREAM, n)
    assert e0 == 3
    best_late = _weight(e0, num_epochs, 3)[1] / num_epochs  # 6 mutation epochs of 12
    target = best_late + 0.04  # reachable from e0 = 2 (7 of 12), not from e0 = 3
    pruner = ScanPruner(n, 2, ScanConfig(seed=4, num_epochs=num_epochs, target_rate=target))
    with pytest.warns(UserWarning, match=f"target_rate={target}.*at the cap"):
        recs = run(pruner, num_epochs, STREAM, batch)
    assert pruner.rho_low + pruner.rho_high == pytest.approx(1.0)
    for rec in recs:
        if rec.summary.phase == "mutate":
            assert rec.summary.rho_cur == 1.0
            assert rec.summary.num_kept == n - rec.summary.num_candidates
