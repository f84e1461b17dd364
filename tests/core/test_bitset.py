"""Property tests of scan_core.bitset: packed little-bit-order bitmaps over sample ids.

The reference is a plain Python set and numpy's packbits(..., bitorder="little"). This module
also runs with NUMBA_DISABLE_JIT=1 (from test_select.py), so every test name holds "bitset".
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from scan_core import bitset


@st.composite
def id_sets(draw, max_n=3000):
    """(ids with repeats allowed, num_samples)."""
    n = draw(st.integers(min_value=0, max_value=max_n))
    if n == 0:
        return np.empty(0, dtype=np.int64), 0
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    size = draw(st.integers(min_value=0, max_value=2 * n))
    ids = np.random.default_rng(seed).integers(0, n, size=size).astype(np.int64)
    return ids, n


@given(st.integers(min_value=0, max_value=10_000))
def test_bitset_new_bits_size(n):
    """new_bits(N) is an all-clear uint8 array of ceil(N / 8) bytes."""
    bits = bitset.new_bits(n)
    assert bits.dtype == np.uint8 and bits.shape == ((n + 7) // 8,)
    assert not bits.any() and bitset.num_bytes(n) == (n + 7) // 8


@given(id_sets())
def test_bitset_layout_is_packbits_little(case):
    """from_ids sets exactly the bits np.packbits(mask, bitorder="little") sets."""
    ids, n = case
    mask = np.zeros(n, dtype=bool)
    mask[ids] = True
    assert np.array_equal(bitset.from_ids(ids, n), np.packbits(mask, bitorder="little"))


@given(id_sets())
def test_bitset_round_trip_set_ids(case):
    """ids_of(from_ids(ids), True) == sorted(set(ids)); with False, the complement."""
    ids, n = case
    bits = bitset.from_ids(ids, n)
    want = sorted(set(ids.tolist()))
    got = bitset.ids_of(bits, n, True)
    assert got.dtype == np.int64 and got.tolist() == want
    assert bitset.ids_of(bits, n, False).tolist() == sorted(set(range(n)) - set(want))


@given(id_sets())
def test_bitset_popcount(case):
    """popcount(from_ids(ids)) == |set(ids)|."""
    ids, n = case
    assert bitset.popcount(bitset.from_ids(ids, n)) == len(set(ids.tolist()))


@given(id_sets())
def test_bitset_test_ids_and_to_bool(case):
    """test_ids(bits, all ids) and to_bool(bits) are the membership mask of set(ids)."""
    ids, n = case
    bits = bitset.from_ids(ids, n)
    members = set(ids.tolist())
    want = np.array([i in members for i in range(n)], dtype=bool)
    assert np.array_equal(bitset.test_ids(bits, np.arange(n)), want)
    assert np.array_equal(bitset.to_bool(bits, n), want)


@given(id_sets(), st.integers(min_value=0, max_value=2**32 - 1))
def test_bitset_ids_of_ignores_padding(case, seed):
    """Bits past N in the last byte are not ids: ids_of returns ids in [0, N) only, and the set
    and clear ids together number N (the docstring: "ids whose bit equals set_value")."""
    _, n = case
    if n % 8 == 0:
        return
    bits = np.random.default_rng(seed).integers(0, 256, size=(n + 7) // 8).astype(np.uint8)
    bits[-1] |= np.uint8(0xFF << (n % 8) & 0xFF)
    set_ids = bitset.ids_of(bits, n, True)
    clear_ids = bitset.ids_of(bits, n, False)
    assert (set_ids < n).all() and (clear_ids < n).all()
    assert len(set_ids) + len(clear_ids) == n


@given(id_sets())
def test_bitset_set_ids_accumulates(case):
    """set_ids ORs into a bitmap: two halves give the bitmap of the whole."""
    ids, n = case
    bits = bitset.new_bits(n)
    half = len(ids) // 2
    bitset.set_ids(bits, ids[:half])
    bitset.set_ids(bits, ids[half:])
    assert np.array_equal(bits, bitset.from_ids(ids, n))


def check_model(ids, n, drop=frozenset()):
    """(code, position) at the first bad id: 1 outside [0, N), 2 a repeat, 3 in the drop set;
    (0, -1) when all are fine."""
    seen = set()
    for i, j in enumerate(ids):
        if j < 0 or j >= n:
            return 1, i
        if j in seen:
            return 2, i
        if j in drop:
            return 3, i
        seen.add(j)
    return 0, -1


@st.composite
def batches_to_check(draw):
    """(ids, N, drop ids or None): clean batches, or with an out-of-range id, a repeat, ids
    that a drop set holds, or several of these."""
    n = draw(st.integers(min_value=1, max_value=500))
    kind = draw(st.sampled_from(["ok", "range", "repeat", "any"]))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    size = draw(st.integers(min_value=0, max_value=n))
    ids = rng.choice(n, size=size, replace=False).astype(np.int64)
    if kind == "range" or (kind == "any" and size):
        bad = draw(st.sampled_from([-1, -(2**40), n, n + 1, 2**40]))
        ids = np.insert(ids, draw(st.integers(0, size)), bad)
    if kind == "repeat" and size or (kind == "any" and size):
        pos = draw(st.integers(0, len(ids)))
        ids = np.insert(ids, pos, ids[draw(st.integers(0, len(ids) - 1))])
    drop = None
    if draw(st.booleans()):
        density = draw(st.sampled_from([0.0, 0.01, 0.2, 1.0]))
        drop = np.flatnonzero(rng.random(n) < density)
    return ids.astype(np.int64), n, drop


def run_check(ids, n, drop):
    if drop is None:
        code, pos = bitset.check_batch_ids(ids, n)
    else:
        code, pos = bitset.check_batch_ids(ids, n, bits_of(drop, n))
    return (int(code), int(pos))


def bits_of(ids, n):
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(ids, dtype=np.int64)] = True
    return np.packbits(mask, bitorder="little")


@given(batches_to_check())
def test_bitset_check_batch_ids_codes(case):
    """check_batch_ids returns (0, -1) for distinct in-range ids, (1, i) at the first id out of
    range (negative included), (2, i) at the first repeat, (3, i) at the first id set in
    drop_bits when given, whichever comes first."""
    ids, n, drop = case
    got = run_check(ids, n, drop)
    want = check_model(ids.tolist(), n, frozenset() if drop is None else set(drop.tolist()))
    assert got == want


@given(batches_to_check())
def test_bitset_check_batch_ids_is_repeatable(case):
    """A second call on the same batch gives the same answer (no state survives a call)."""
    ids, n, drop = case
    assert run_check(ids, n, drop) == run_check(ids, n, drop)


def test_bitset_check_batch_ids_examples():
    """Worked examples of each code."""
    ids = lambda *xs: np.array(xs, dtype=np.int64)  # noqa: E731
    assert bitset.check_batch_ids(ids(0, 9, 5), 10) == (0, -1)
    assert bitset.check_batch_ids(ids(0, -1, 5), 10) == (1, 1)
    assert bitset.check_batch_ids(ids(3, 4, 10), 10) == (1, 2)
    assert bitset.check_batch_ids(ids(3, 4, 3), 10) == (2, 2)
    assert bitset.check_batch_ids(ids(), 10) == (0, -1)
    drop = bits_of([4, 7], 10)
    assert bitset.check_batch_ids(ids(0, 9, 7), 10, drop) == (3, 2)
    assert bitset.check_batch_ids(ids(4, 4), 10, drop) == (3, 0)
