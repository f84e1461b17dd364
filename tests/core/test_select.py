"""Property tests of scan_core.select: the Numba kernels against their numpy twins, and the
selection rules of SPEC.md ("Candidates") checked directly.

Tests named `*twin*` compare a kernel with its twin; `test_twins_agree_without_jit` reruns them
(and test_bitset.py) in a subprocess with NUMBA_DISABLE_JIT=1, so the pure-Python path of the
kernels is held to the same results and may let no RuntimeWarning escape (pyproject turns
RuntimeWarnings from scan_core into errors).

Batches are built from a hypothesis-drawn numpy seed and explicit bounds, not element by
element, so B can reach 2048 without slowing hypothesis down.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_core.select import (SALT_DROP, SALT_HIGH, SALT_LOW, draw_subset, draw_subset_numpy,
                              k_of, loss_stats, one_end_numpy, select_batch, stream_key)

NO_JIT = bool(numba.config.DISABLE_JIT)
# Pure-Python kernels are slow: fewer examples when the JIT is off (the subprocess run).
FEW = settings(max_examples=12) if NO_JIT else settings(max_examples=60)
MANY = settings(max_examples=25) if NO_JIT else settings(max_examples=150)
REPO = Path(__file__).resolve().parents[2]


def bits_of(ids, num_samples):
    """Packed little-bit-order bitmap of `ids`, built without scan_core.bitset."""
    mask = np.zeros(num_samples, dtype=bool)
    mask[np.asarray(ids, dtype=np.int64)] = True
    return np.packbits(mask, bitorder="little")


def ids_in(bits, num_samples):
    """Sorted ids whose bit is set, built without scan_core.bitset."""
    return np.flatnonzero(np.unpackbits(bits, count=num_samples, bitorder="little"))


rho_st = st.one_of(st.sampled_from([0.3, 0.35, 0.05, 0.5, 0.7, 0.0]), st.floats(0.0, 1.0))


@st.composite
def batches(draw, max_batch=2048):
    """(ids, losses, k_low, k_high, num_samples, key_low, key_high, ties, same_views).

    Views are identical, nearly identical (small noise: intersections just under k) or
    independent (thin intersections, top-ups); losses continuous or from a tiny set (ties).
    """
    b = draw(st.integers(min_value=1, max_value=max_batch))
    views = draw(st.sampled_from([1, 2, 2, 3, 3]))
    rho_low = draw(rho_st)
    rho_high = min(draw(rho_st), 1.0 - rho_low)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    distinct = draw(st.sampled_from([None, 2, None, 1, None, 3, 7]))  # None: continuous
    signed = draw(st.booleans())  # shift so some losses are negative (and zeros of both signs)
    relation = draw(st.sampled_from(["same", "near", "near", "independent", "independent"]))
    noise = draw(st.sampled_from([0.02, 0.1, 0.3, 0.05, 0.2]))  # "near": intersection ~0.7..1 k
    same_views = views == 1 or relation == "same"
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    extra = draw(st.integers(min_value=0, max_value=3 * b))
    rng = np.random.default_rng(seed)
    num_samples = b + extra
    ids = rng.choice(num_samples, size=b, replace=False).astype(np.int64)
    if distinct is None:
        losses = rng.gamma(2.0, 1.5, size=(views, b))
    else:
        levels = rng.uniform(0.0, 5.0, size=distinct)
        losses = levels[rng.integers(0, distinct, size=(views, b))]
    if signed:
        losses = losses - 2.5
        losses[rng.random(losses.shape) < 0.05] = -0.0
        losses[rng.random(losses.shape) < 0.05] = 0.0
    if relation != "independent":
        losses = np.repeat(losses[:1], views, axis=0)
    if relation == "near" and distinct is None:
        losses = losses + rng.normal(0.0, noise, size=losses.shape)
    losses = np.ascontiguousarray(losses.astype(dtype))
    keys = (stream_key(seed, 3, SALT_LOW), stream_key(seed, 3, SALT_HIGH))
    return (ids, losses, math.floor(rho_low * b), math.floor(rho_high * b), num_samples,
            keys[0], keys[1], distinct is not None, same_views)


def run_kernel(ids, losses, k_low, k_high, num_samples, key_low, key_high):
    red = np.zeros((num_samples + 7) // 8, dtype=np.uint8)
    ill = np.zeros_like(red)
    n_red, n_ill = select_batch(ids, losses, k_low, k_high, key_low, key_high, red, ill)
    return red, ill, n_red, n_ill


def per_view_ends(losses, k, lowest):
    """Positions of each view's k lowest / highest losses (ties broken by batch position)."""
    out = []
    for row in losses:
        order = np.argsort(row, kind="stable")
        out.append(set((order[:k] if lowest else order[len(row) - k:]).tolist()))
    return out


# -- select_batch ----------------------------------------------------------------------------

@MANY
@given(batches())
def test_select_batch_equals_twin(batch):
    """The kernel marks exactly the ids the numpy twin returns, at both ends, and returns
    their counts."""
    ids, losses, k_low, k_high, n, key_low, key_high, _, _ = batch
    red, ill, n_red, n_ill = run_kernel(ids, losses, k_low, k_high, n, key_low, key_high)
    want_red = one_end_numpy(ids, losses, k_low, True, key_low)
    want_ill = one_end_numpy(ids, losses, k_high, False, key_high)
    assert np.array_equal(red, bits_of(want_red, n))
    assert np.array_equal(ill, bits_of(want_ill, n))
    assert (n_red, n_ill) == (len(want_red), len(want_ill))


@FEW
@given(batches(), st.integers(min_value=0, max_value=1))
def test_select_batch_twin_ignores_existing_bits(batch, which):
    """The kernel only adds bits: marks already set elsewhere in the bitmap stay, and the new
    ones are the twin's (candidates accumulate over the batches of an epoch)."""
    ids, losses, k_low, k_high, n, key_low, key_high, _, _ = batch
    rng = np.random.default_rng(len(ids) + which)
    others = np.setdiff1d(rng.choice(n, size=min(n, 50), replace=False), ids)
    red, ill = bits_of(others, n), bits_of(others, n)
    select_batch(ids, losses, k_low, k_high, key_low, key_high, red, ill)
    want_red = np.union1d(others, one_end_numpy(ids, losses, k_low, True, key_low))
    want_ill = np.union1d(others, one_end_numpy(ids, losses, k_high, False, key_high))
    assert np.array_equal(ids_in(red, n), want_red)
    assert np.array_equal(ids_in(ill, n), want_ill)


@MANY
@given(batches())
def test_candidate_sizes(batch):
    """Per end with k = floor(rho * B): exactly k candidates with one view, identical views, or
    a thin intersection (< 0.9 k, topped up); otherwise the intersection itself, between
    ceil(0.9 k) and k. Every candidate comes from the batch and from the union of the views'
    ends, and contains their intersection."""
    ids, losses, k_low, k_high, n, key_low, key_high, _, same_views = batch
    red, ill, n_red, n_ill = run_kernel(ids, losses, k_low, k_high, n, key_low, key_high)
    for bits, count, k, lowest in ((red, n_red, k_low, True), (ill, n_ill, k_high, False)):
        chosen = ids_in(bits, n)
        assert len(chosen) == count
        ends = per_view_ends(losses, k, lowest)
        inter = ids[sorted(set.intersection(*ends))] if k else ids[:0]
        union = ids[sorted(set.union(*ends))] if k else ids[:0]
        assert set(inter.tolist()) <= set(chosen.tolist()) <= set(union.tolist())
        if same_views or len(inter) < 0.9 * k:
            assert len(chosen) == k
        else:
            assert math.ceil(0.9 * k) <= len(chosen) <= k
            assert len(chosen) == len(inter)


@MANY
@given(batches().filter(lambda b: b[1].shape[0] == 1))
def test_one_view_selects_the_k_extremes(batch):
    """With one view, red is k samples none of whose losses exceeds any unselected one, and
    ill is k samples none of whose losses is below any unselected one (ties either way)."""
    ids, losses, k_low, k_high, n, key_low, key_high, _, _ = batch
    red, ill, _, _ = run_kernel(ids, losses, k_low, k_high, n, key_low, key_high)
    loss_of = dict(zip(ids.tolist(), losses[0].tolist()))
    for bits, k, lowest in ((red, k_low, True), (ill, k_high, False)):
        chosen = set(ids_in(bits, n).tolist())
        assert len(chosen) == k
        rest = [loss_of[i] for i in ids.tolist() if i not in chosen]
        picked = [loss_of[i] for i in chosen]
        if picked and rest:
            if lowest:
                assert max(picked) <= min(rest)
            else:
                assert min(picked) >= max(rest)


@FEW
@given(batches())
def test_k_zero_selects_nothing(batch):
    """k = 0 at an end selects nothing there (the released code selected the whole batch)."""
    ids, losses, _, _, n, key_low, key_high, _, _ = batch
    red, ill, n_red, n_ill = run_kernel(ids, losses, 0, 0, n, key_low, key_high)
    assert (n_red, n_ill) == (0, 0)
    assert not red.any() and not ill.any()


@FEW
@given(batches())
def test_selection_ignores_batch_order(batch):
    """Permuting the batch (ids and losses together) leaves the candidates unchanged when
    losses are distinct (with ties, positions break them, so order may matter)."""
    ids, losses, k_low, k_high, n, key_low, key_high, ties, _ = batch
    if ties or any(len(np.unique(row)) < len(row) for row in losses):
        return
    perm = np.random.default_rng(len(ids)).permutation(len(ids))
    a = run_kernel(ids, losses, k_low, k_high, n, key_low, key_high)
    b = run_kernel(ids[perm], np.ascontiguousarray(losses[:, perm]), k_low, k_high, n,
                   key_low, key_high)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_one_view_float64_ranks_at_full_precision():
    """SPEC.md: red = the floor(rho_low * B) samples with the *lowest* loss. Float64 losses that
    differ by less than float32 resolution are still ordered: with 1.0 + 1e-12 at position 0
    and 1.0 at position 1, k = 1 picks id 11 (position 1) as red and id 10 as ill."""
    ids = np.array([10, 11], dtype=np.int64)
    losses = np.array([[1.0 + 1e-12, 1.0]], dtype=np.float64)
    red, ill, _, _ = run_kernel(ids, losses, 1, 1, 16, np.uint64(1), np.uint64(2))
    assert ids_in(red, 16).tolist() == [11]
    assert ids_in(ill, 16).tolist() == [10]


def test_topup_example():
    """Two views that disagree entirely: red_1 = {0, 1}, red_2 = {2, 3}; the intersection is
    empty (< 0.9 * 2), so red is topped up to 2 ids drawn from {0, 1, 2, 3}."""
    ids = np.arange(4, dtype=np.int64)
    losses = np.array([[0.1, 0.2, 0.9, 0.8], [0.9, 0.8, 0.1, 0.2]])
    red, _, n_red, _ = run_kernel(ids, losses, 2, 0, 4, np.uint64(7), np.uint64(8))
    chosen = ids_in(red, 4)
    assert n_red == 2 and len(chosen) == 2 and set(chosen.tolist()) <= {0, 1, 2, 3}


@pytest.mark.parametrize("rho,batch,want", [(0.3, 10, 3), (0.29, 100, 29), (0.35, 20, 7),
                                            (0.0, 50, 0), (1.0, 7, 7), (0.3, 3, 0)])
def test_k_of_examples(rho, batch, want):
    """k_of is floor(rho * B) as the user means rho (0.29 * 100 is 29, not 28.999...)."""
    assert k_of(rho, batch) == want


@given(st.integers(min_value=0, max_value=100), st.integers(min_value=1, max_value=100_000))
def test_k_of_percentages(percent, batch):
    """k_of(p / 100, B) == floor(p * B / 100) exactly, for whole percentages."""
    assert k_of(percent / 100, batch) == percent * batch // 100


# -- draw_subset -----------------------------------------------------------------------------

@st.composite
def candidate_sets(draw, max_n=5000):
    """(cand_ids sorted, num_samples, k, key)."""
    n = draw(st.integers(min_value=0, max_value=max_n))
    density = draw(st.sampled_from([0.0, 0.01, 0.3, 0.7, 1.0]))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    cand = np.flatnonzero(rng.random(n) < density).astype(np.int64)
    k = draw(st.integers(min_value=0, max_value=n + 10))
    epoch = draw(st.integers(min_value=0, max_value=10_000))
    return cand, n, k, stream_key(seed, epoch, SALT_DROP)


def run_draw(cand, n, k, key):
    out = np.zeros((n + 7) // 8, dtype=np.uint8)
    got = draw_subset(None if cand is None else bits_of(cand, n), n, k, key, out)
    return out, got


@MANY
@given(candidate_sets())
def test_draw_subset_equals_twin(case):
    """The kernel draws exactly the ids the numpy twin draws."""
    cand, n, k, key = case
    out, got = run_draw(cand, n, k, key)
    want = draw_subset_numpy(cand, k, key)
    assert np.array_equal(ids_in(out, n), want)
    assert got == len(want)


@MANY
@given(candidate_sets())
def test_draw_subset_twin_with_all_ids(case):
    """With cand None the kernel draws from all ids 0..N-1, as the twin over arange(N)."""
    _, n, k, key = case
    out, got = run_draw(None, n, k, key)
    want = draw_subset_numpy(np.arange(n, dtype=np.int64), k, key)
    assert np.array_equal(ids_in(out, n), want)
    assert got == len(want) == min(k, n)
    # padding bits past N stay clear (ids_in cuts them off, so look at the raw bytes)
    assert np.array_equal(out, bits_of(want, n))


@MANY
@given(candidate_sets())
def test_draw_subset_exact_size_inside_candidates(case):
    """Exactly min(k, |cand|) distinct ids are drawn, all of them candidates."""
    cand, n, k, key = case
    out, got = run_draw(cand, n, k, key)
    drawn = ids_in(out, n)
    assert got == len(drawn) == min(k, len(cand))
    assert np.isin(drawn, cand).all()


@FEW
@given(candidate_sets())
def test_draw_subset_deterministic(case):
    """The same key gives the same draw."""
    cand, n, k, key = case
    assert np.array_equal(run_draw(cand, n, k, key)[0], run_draw(cand, n, k, key)[0])


@FEW
@given(st.integers(min_value=64, max_value=3000), st.integers(min_value=0, max_value=2**31),
       st.integers(min_value=0, max_value=1000))
def test_draw_subset_differs_between_epochs(n, seed, epoch):
    """Keys of consecutive epochs give different draws (k ~ n/2 of n >= 64 candidates: two
    equal uniform draws have chance 1 / C(n, k) < 1e-17)."""
    cand = np.arange(n, dtype=np.int64)
    k = n // 2
    a = run_draw(cand, n, k, stream_key(seed, epoch, SALT_DROP))[0]
    b = run_draw(cand, n, k, stream_key(seed, epoch + 1, SALT_DROP))[0]
    assert not np.array_equal(a, b)


def test_stream_keys_are_distinct():
    """Keys differ across seeds, epochs and salts (no two streams coincide)."""
    keys = {int(stream_key(s, e, salt)) for s in range(20) for e in range(50)
            for salt in (SALT_LOW, SALT_HIGH, SALT_DROP)}
    assert len(keys) == 20 * 50 * 3


def test_draw_subset_roughly_uniform():
    """Over 4000 keys, each of 60 candidates is drawn with frequency near k / |cand| = 0.25.
    The standard error is 0.0068, the bound 0.05 (7 standard errors); the keys are fixed, so
    the test is deterministic."""
    n, k, trials = 200, 15, 4000
    cand = np.arange(0, 180, 3, dtype=np.int64)  # 60 candidates spread over 200 ids
    cand_bits = bits_of(cand, n)
    counts = np.zeros(n, dtype=np.int64)
    for t in range(trials):
        out = np.zeros((n + 7) // 8, dtype=np.uint8)
        draw_subset(cand_bits, n, k, stream_key(12345, t, SALT_DROP), out)
        counts += np.unpackbits(out, count=n, bitorder="little")
    freq = counts[cand] / trials
    assert np.abs(freq - k / len(cand)).max() < 0.05
    assert counts.sum() == k * trials
    assert counts[np.setdiff1d(np.arange(n), cand)].sum() == 0


def test_draw_subset_first_position_uniform():
    """Algorithm S must not favour early ids: the first and last candidate are drawn about as
    often (difference below 0.05 over 4000 fixed keys, with k / |cand| = 0.5)."""
    n, k, trials = 40, 20, 4000
    hits = np.zeros(n, dtype=np.int64)
    for t in range(trials):
        out = np.zeros(5, dtype=np.uint8)
        draw_subset(None, n, k, stream_key(99, t, SALT_DROP), out)
        hits += np.unpackbits(out, count=n, bitorder="little")
    assert abs(hits[0] - hits[-1]) / trials < 0.05
    assert np.abs(hits / trials - 0.5).max() < 0.05


# -- loss_stats -------------------------------------------------------------------------------

@st.composite
def loss_arrays(draw, with_bad):
    b = draw(st.integers(min_value=1, max_value=512))
    views = draw(st.integers(min_value=1, max_value=3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    losses = rng.gamma(2.0, 2.0, size=(views, b)).astype(dtype)
    first = -1
    if with_bad:
        nbad = draw(st.integers(min_value=1, max_value=min(b, 5)))
        bad = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        for _ in range(nbad):
            p, v = int(rng.integers(0, b)), int(rng.integers(0, views))
            losses[v, p] = bad
        first = int(np.flatnonzero(~np.isfinite(losses).all(axis=0))[0])
    return losses, first


@MANY
@given(loss_arrays(False))
def test_loss_stats_twin_sum_of_view_means(case):
    """loss_stats returns (sum over samples of the mean over views, -1) for finite losses."""
    losses, _ = case
    total, bad = loss_stats(losses)
    want = math.fsum((losses.astype(np.float64).sum(axis=0) / losses.shape[0]).tolist())
    assert bad == -1
    assert math.isclose(total, want, rel_tol=1e-12)


@MANY
@given(loss_arrays(True))
def test_loss_stats_twin_first_non_finite(case):
    """loss_stats reports the first batch position holding a NaN or inf in any view."""
    losses, first = case
    assert loss_stats(losses)[1] == first


# -- the pure-Python path --------------------------------------------------------------------

@pytest.mark.skipif(NO_JIT, reason="this is the JIT-on run; the subprocess runs the rest")
def test_twins_agree_without_jit():
    """With NUMBA_DISABLE_JIT=1 the kernels run as plain Python; the twin comparisons here and
    all of test_bitset.py must pass there too, with no RuntimeWarning escaping."""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-W", "error::RuntimeWarning",
           "tests/core/test_select.py", "tests/core/test_bitset.py", "-k", "twin or bitset"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "RuntimeWarning" not in out, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 12, out[-6000:]
