"""Packed bitmaps over sample ids: one bit per sample, little bit order inside each byte
(the layout of `np.packbits(..., bitorder="little")`).

A candidate set, a drop set or a seen set costs N / 8 bytes: 125 MB at N = 1e9, where the
released code's Python sets of tuples cost about 200 bytes per member.
"""

from __future__ import annotations

import numba
import numpy as np

_U8 = np.uint8


def num_bytes(num_samples: int) -> int:
    return (num_samples + 7) // 8


def new_bits(num_samples: int) -> np.ndarray:
    """An all-clear bitmap for ids 0..num_samples-1."""
    return np.zeros(num_bytes(num_samples), dtype=_U8)


def popcount(bits: np.ndarray) -> int:
    """Number of set bits."""
    return int(np.bitwise_count(bits).sum(dtype=np.int64))


def from_ids(ids: np.ndarray, num_samples: int) -> np.ndarray:
    bits = new_bits(num_samples)
    set_ids(bits, np.asarray(ids, dtype=np.int64))
    return bits


def to_bool(bits: np.ndarray, num_samples: int) -> np.ndarray:
    return np.unpackbits(bits, count=num_samples, bitorder="little").astype(bool)


def test_ids(bits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Boolean array: is each id's bit set? (vectorised; ids must be in range)."""
    ids = np.asarray(ids, dtype=np.int64)
    return ((bits[ids >> 3] >> (ids & 7).astype(_U8)) & 1).astype(bool)


@numba.njit(cache=True, nogil=True)
def set_ids(bits, ids):
    """Set the bit of every id in `ids` (int64, in range)."""
    for i in range(ids.shape[0]):
        j = ids[i]
        bits[j >> 3] |= np.uint8(1 << (j & 7))


def ids_of(bits: np.ndarray, num_samples: int, set_value: bool) -> np.ndarray:
    """Sorted int64 ids in [0, num_samples) whose bit equals `set_value` (True: set bits;
    False: clear bits). Bits past num_samples in the last byte are ignored. Uses one byte per
    sample of scratch while it runs."""
    flags = np.unpackbits(bits, count=num_samples, bitorder="little")
    if not set_value:
        np.logical_not(flags, out=flags)
    return np.flatnonzero(flags).astype(np.int64, copy=False)


def check_batch_ids(ids: np.ndarray, num_samples: int,
                    drop_bits: np.ndarray | None = None) -> tuple[int, int]:
    """Validate one batch of int64 ids: 0 <= id < num_samples, no repeats, and none of them set
    in `drop_bits` when given.

    Returns (code, position) of the first problem: code 0 = fine (position -1), 1 = out of
    range, 2 = repeated, 3 = set in drop_bits. Repeats are found with a small open-addressing
    table private to the call (it fits in L1 cache), so the cost is O(B) whatever N is.
    """
    check_drop = drop_bits is not None
    return _check_batch_ids(ids, num_samples, drop_bits if check_drop else _EMPTY, check_drop)


_EMPTY = np.zeros(1, dtype=np.uint8)


@numba.njit(cache=True, nogil=True)
def _check_batch_ids(ids, num_samples, drop_bits, check_drop):
    size = 16
    while size < 2 * ids.shape[0]:
        size *= 2
    table = np.zeros(size, dtype=np.int64)  # id + 1; 0 = empty
    mask = size - 1
    for i in range(ids.shape[0]):
        j = ids[i]
        if j < 0 or j >= num_samples:
            return 1, i
        slot = (j ^ (j >> 11) ^ (j >> 23)) & mask  # no multiply: no uint64 overflow warnings
        while table[slot] != 0:
            if table[slot] == j + 1:
                return 2, i
            slot = (slot + 1) & mask
        table[slot] = j + 1
        if check_drop and (drop_bits[j >> 3] >> (j & 7)) & 1:
            return 3, i
    return 0, -1
