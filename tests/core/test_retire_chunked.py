"""scan_core.retire.retire_more_chunked against its whole-array twin history.retire_more: the
same retired set, whatever the chunk, with unseen samples, a full cap, ties and a histogram
bin that holds many candidates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_core import bitset
from scan_core.history import retire_more
from scan_core.retire import HISTOGRAM_BINS, retire_more_chunked


def ids(bits: np.ndarray, n: int) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(bits, count=n, bitorder="little"))


def both(losses, ill, retired, cap, chunk):
    n = losses.shape[1]
    twin = retire_more(losses, ill, retired, cap)
    chunked = retire_more_chunked(lambda lo, hi: losses[:, lo:hi], n, ill, retired, cap,
                                  chunk_samples=chunk)
    return ids(twin, n), ids(chunked, n)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3000), views=st.integers(1, 3),
       chunk=st.sampled_from([8, 64, 1000, 1 << 20]), share=st.floats(0.0, 0.6),
       unseen=st.floats(0.0, 0.3), ill_share=st.floats(0.0, 1.0))
def test_the_chunked_step_retires_what_the_whole_array_twin_retires(
        seed, n, views, chunk, share, unseen, ill_share):
    rng = np.random.default_rng(seed)
    losses = rng.gamma(2.0, 1.0, (views, n)).astype(np.float32)
    losses[rng.random((views, n)) < unseen] = np.nan
    ill = bitset.from_ids(np.flatnonzero(rng.random(n) < ill_share), n)
    retired = bitset.from_ids(np.flatnonzero(rng.random(n) < share / 3), n)
    cap = int(share * n)
    twin, chunked = both(losses, ill, retired, cap, chunk)
    np.testing.assert_array_equal(chunked, twin)
    assert np.isin(ids(retired, n), chunked).all()                  # retired stay retired
    assert len(chunked) <= max(cap, bitset.popcount(retired))


@pytest.mark.parametrize("chunk", [8, 16, 1 << 20])
def test_ties_go_to_the_lower_id_and_a_crowded_bin_is_ordered_exactly(chunk):
    n = 4000
    losses = np.ones((1, n), np.float32)          # one value: every z ties, one bin holds all
    losses[0, ::7] = 2.0                           # a higher tier, tied within itself
    ill = bitset.from_ids(np.arange(n), n)
    twin, chunked = both(losses, ill, bitset.new_bits(n), 700, chunk)
    np.testing.assert_array_equal(chunked, twin)
    higher = np.arange(0, n, 7)
    np.testing.assert_array_equal(chunked, np.sort(np.concatenate(
        [higher, np.setdiff1d(np.arange(n), higher)[:700 - len(higher)]])))
    # a spread with a dense core: many candidates share the boundary bin
    rng = np.random.default_rng(0)
    losses = np.concatenate([rng.normal(0, 1e-6, (1, n - 2)), [[-1e4, 1e4]]], 1)
    twin, chunked = both(losses.astype(np.float32), ill, bitset.new_bits(n), 1500, chunk)
    np.testing.assert_array_equal(chunked, twin)
    assert HISTOGRAM_BINS > 1000


def test_a_full_cap_or_no_finite_view_retires_nothing_new():
    n = 100
    losses = np.random.default_rng(1).random((2, n)).astype(np.float32)
    ill = bitset.from_ids(np.arange(50), n)
    full = bitset.from_ids(np.arange(60, 70), n)
    np.testing.assert_array_equal(retire_more_chunked(lambda lo, hi: losses[:, lo:hi], n, ill,
                                                      full, 10), full)
    losses[1] = np.nan                             # view 1 never seen: no finite z anywhere
    np.testing.assert_array_equal(retire_more_chunked(lambda lo, hi: losses[:, lo:hi], n, ill,
                                                      bitset.new_bits(n), 10),
                                  bitset.new_bits(n))
    np.testing.assert_array_equal(retire_more(losses, ill, bitset.new_bits(n), 10),
                                  bitset.new_bits(n))
