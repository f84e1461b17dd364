"""Numba kernels of SCAN's selection, each beside a plain numpy twin the tests compare against.

Randomness is counter-based (splitmix64 of seed, epoch, a salt and the sample id), so a draw
depends on nothing but those: not on batch order, rank, process or resume point.

- `select_batch`: the per-batch dual-end selection of SPEC.md ("Candidates"): per view the
  floor(rho_low * B) lowest and floor(rho_high * B) highest losses; with several views the
  intersection, topped up at random from the rest of the union to k when it holds fewer than
  0.9 * k (the authors' rule). Marks the chosen ids in packed bitmaps.
- `draw_subset`: an exactly-k uniform random subset of a candidate bitmap (Knuth's selection
  sampling, Algorithm S), written as a drop bitmap: O(N / 8) memory, one pass.
"""

from __future__ import annotations

import contextlib
import math

import numba
import numpy as np

from scan_core.bitset import _EMPTY, _check_batch_ids
from scan_core.rank import mark_ends

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
TOPUP_FRACTION = 0.9  # the authors' threshold for topping up a thin intersection

# Salts keep the streams of different draws apart.
SALT_LOW, SALT_HIGH, SALT_DROP, SALT_INFOBATCH = 1, 2, 3, 4


def _mix64_py(x: int) -> int:
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_key(seed: int, epoch: int, salt: int) -> np.uint64:
    """The 64-bit key of one draw: a function of (seed, epoch, salt) only."""
    return np.uint64(_mix64_py(_mix64_py(seed) ^ _mix64_py(epoch * 0x100 + salt + _GAMMA)))


def k_of(rho: float, batch_size: int) -> int:
    """floor(rho * B), robust to the float error of rho * B (0.29 * 100 is 28.999...)."""
    return int(math.floor(rho * batch_size + 1e-9))


_NO_JIT = bool(numba.config.DISABLE_JIT)
_NULL = contextlib.nullcontext()


def errstate():
    """Kernels do wrapping uint64 arithmetic; under NUMBA_DISABLE_JIT numpy would warn."""
    return np.errstate(over="ignore") if _NO_JIT else _NULL


@numba.njit(cache=True, nogil=True)
def _mix64(x):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def _uniform(key, j):
    """The j-th uniform double in [0, 1) of the stream `key`."""
    return np.float64(_mix64(key + np.uint64(j + 1) * np.uint64(0x9E3779B97F4A7C15))
                      >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, nogil=True)
def _finish_end(ids, votes, num_views, k, key, bits):
    """Intersection of the views' picks, topped up to k from the rest of their union when it
    holds fewer than 0.9 k; sets the chosen ids' bits and returns how many were chosen.

    Written without data-dependent branches where it can be (positions are compacted by
    always writing and conditionally advancing): the votes are random, so branches on them
    would be mispredicted about half the time."""
    batch = votes.shape[0]
    inter = np.empty(batch, dtype=np.int64)
    pool = np.empty(batch, dtype=np.int64)
    n_inter = 0
    n_pool = 0
    for p in range(batch):
        v = votes[p]
        inter[n_inter] = p
        n_inter += v == num_views
        pool[n_pool] = p
        n_pool += (v > 0) & (v < num_views)
    for i in range(n_inter):
        j = ids[inter[i]]
        bits[j >> 3] |= np.uint8(1 << (j & 7))
    if num_views == 1 or n_inter >= TOPUP_FRACTION * k:
        return n_inter
    # Top up with a uniform random (k - n_inter)-subset of the pool (selection sampling over
    # the pool in batch order, one hashed uniform per member keyed by its id).
    need = k - n_inter
    remaining = n_pool
    for i in range(n_pool):
        j = ids[pool[i]]
        u = np.float64(_mix64(key ^ (np.uint64(j) * np.uint64(0x9E3779B97F4A7C15)))
                       >> np.uint64(11)) * (1.0 / 9007199254740992.0)
        take = u * remaining < need
        bits[j >> 3] |= np.uint8(take << (j & 7))
        need -= take
        remaining -= 1
    return k


@numba.njit(cache=True, nogil=True)
def _select_batch(ids, losses, k_low, k_high, key_low, key_high, red_bits, ill_bits):
    num_views, batch = losses.shape
    votes_low = np.zeros(batch, dtype=np.int32)
    votes_high = np.zeros(batch, dtype=np.int32)
    mark_low = np.empty(batch, dtype=np.uint8)
    mark_high = np.empty(batch, dtype=np.uint8)
    for v in range(num_views):
        mark_low[:] = 0
        mark_high[:] = 0
        mark_ends(losses[v], k_low, k_high, mark_low, mark_high)
        for p in range(batch):
            votes_low[p] += mark_low[p]
            votes_high[p] += mark_high[p]
    n_red = _finish_end(ids, votes_low, num_views, k_low, key_low, red_bits) if k_low > 0 else 0
    n_ill = _finish_end(ids, votes_high, num_views, k_high, key_high, ill_bits) if k_high > 0 else 0
    return n_red, n_ill


def select_batch(ids: np.ndarray, losses: np.ndarray, k_low: int, k_high: int,
                 key_low: np.uint64, key_high: np.uint64,
                 red_bits: np.ndarray, ill_bits: np.ndarray) -> tuple[int, int]:
    """Mark one batch's redundant and ill-matched candidates in `red_bits` / `ill_bits`.

    ids: (B,) int64, distinct. losses: (V, B) finite, ranked exactly (float32 and float64 at
    their own precision; float16 and integers are widened), ties broken by batch position.
    Returns the number of candidates chosen at each end.
    """
    if losses.dtype != np.float32:
        wide = losses.dtype == np.float64 or losses.dtype.kind in "iu"
        losses = losses.astype(np.float64 if wide else np.float32)
    losses = np.ascontiguousarray(losses)
    with errstate():
        return _select_batch(ids, losses, k_low, k_high, key_low, key_high, red_bits, ill_bits)


@numba.njit(cache=True, nogil=True)
def _draw_subset(cand_bits, num_samples, all_ids, k, key, out_bits):
    total = 0
    if all_ids:
        total = num_samples
    else:
        for b in range(cand_bits.shape[0]):
            x = cand_bits[b]
            while x:
                x &= x - np.uint8(1)
                total += 1
    need = min(k, total)
    remaining = total
    j = 0
    for b in range(out_bits.shape[0]):
        if need == 0:
            break
        x = np.uint8(0xFF) if all_ids else cand_bits[b]
        if x == 0:
            continue
        for bit in range(8):
            sid = b * 8 + bit
            if sid >= num_samples:
                break
            if (x >> bit) & 1:
                if _uniform(key, j) * remaining < need:
                    out_bits[b] |= np.uint8(1 << bit)
                    need -= 1
                remaining -= 1
                j += 1
    return min(k, total)


def draw_subset(cand_bits: np.ndarray | None, num_samples: int, k: int, key: np.uint64,
                out_bits: np.ndarray) -> int:
    """Set in `out_bits` a uniform random subset of exactly min(k, |candidates|) candidates.

    cand_bits: packed candidate bitmap, or None for all ids 0..num_samples-1. Returns the
    number drawn.
    """
    all_ids = cand_bits is None
    cand = out_bits if all_ids else cand_bits  # any uint8 array when unused
    with errstate():
        return _draw_subset(cand, num_samples, all_ids, int(k), key, out_bits)


# -- plain numpy twins (the tests hold the kernels to these) ---------------------------------

def _mix64_np(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def one_end_numpy(ids: np.ndarray, losses: np.ndarray, k: int, lowest: bool,
                  key: np.uint64) -> np.ndarray:
    """Sorted ids chosen at one end: the twin of the kernel, written with set operations."""
    num_views, batch = losses.shape
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    per_view = []
    wide = losses.dtype == np.float64 or losses.dtype.kind in "iu"
    ranked = losses.astype(np.float64 if wide else np.float32) + 0.0  # -0.0 ranks as +0.0
    for v in range(num_views):
        order = np.argsort(ranked[v], kind="stable")
        per_view.append(order[:k] if lowest else order[batch - k:])
    inter = per_view[0]
    for sel in per_view[1:]:
        inter = np.intersect1d(inter, sel)
    chosen = ids[inter]
    if num_views > 1 and len(inter) < TOPUP_FRACTION * k:
        union = np.unique(np.concatenate(per_view))
        pool = ids[np.setdiff1d(union, inter)]  # in batch order
        with np.errstate(over="ignore"):
            prio = _mix64_np(np.uint64(key) ^ (pool.astype(np.uint64) * np.uint64(_GAMMA)))
        u = (prio >> np.uint64(11)).astype(np.float64) / 2.0**53
        chosen = np.concatenate([chosen, _selection_sampling_numpy(pool, u, k - len(inter))])
    return np.sort(chosen)


def draw_subset_numpy(cand_ids: np.ndarray, k: int, key: np.uint64) -> np.ndarray:
    """Twin of `draw_subset` over sorted candidate ids: the same stream, the same decisions."""
    total = len(cand_ids)
    with np.errstate(over="ignore"):
        steps = np.arange(1, total + 1, dtype=np.uint64) * np.uint64(_GAMMA)
        u = (_mix64_np(np.uint64(key) + steps) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return _selection_sampling_numpy(cand_ids, u, min(k, total))


def _selection_sampling_numpy(items: np.ndarray, u: np.ndarray, need: int) -> np.ndarray:
    """Knuth's selection sampling (Algorithm S) as the kernels run it: walking `items` in
    order, item q is taken when u[q] * (items left) < need, so exactly min(need, len(items))
    are taken, each with equal probability. int64, in the items' order."""
    picked, remaining = [], len(items)
    for q in range(len(items)):
        if need == 0:
            break
        if u[q] * remaining < need:
            picked.append(items[q])
            need -= 1
        remaining -= 1
    return np.asarray(picked, dtype=np.int64)


@numba.njit(cache=True, nogil=True)
def loss_stats(losses):
    """(sum over samples of the mean over views, position of the first non-finite loss or -1)."""
    num_views, batch = losses.shape
    total = 0.0
    for p in range(batch):
        acc = 0.0
        for v in range(num_views):
            x = np.float64(losses[v, p])
            if not np.isfinite(x):
                return total, p
            acc += x
        total += acc / num_views
    return total, -1


def _prefetch_python(bits, index):
    """Under NUMBA_DISABLE_JIT a prefetch is nothing."""


if _NO_JIT:
    prefetch = _prefetch_python
else:
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, bits, index):
        """Hint the CPU to fetch bits[index]'s cache line for writing (LLVM's llvm.prefetch:
        never faults, changes nothing)."""
        sig = types.void(bits, index)

        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, signature.args[0], array,
                                           [args[1]], wraparound=False)
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0")
            builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 1),
                              ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen


@numba.njit(cache=True, nogil=True)
def _prefetch_ids(ids, num_samples, bits):
    for i in range(ids.shape[0]):
        j = ids[i]
        if j >= 0 and j < num_samples:
            prefetch(bits, j >> 3)


@numba.njit(cache=True, nogil=True)
def _record_batch(ids, losses, num_samples, drop_bits, check_drop, collect,
                  k_low, k_high, key_low, key_high, red_bits, ill_bits, seen_bits, mark_seen):
    # From N = 1e7 on the bitmaps miss the cache at random places. Asking for every line this
    # batch will write (seen bits, and the candidate bits in a preparation epoch) before the
    # checks and the ranking lets the misses overlap that work instead of following it: it
    # paid for the seen bitmap's extra misses (docs/benchmarks.md, issue 15).
    if mark_seen:
        _prefetch_ids(ids, num_samples, seen_bits)
    if collect:
        _prefetch_ids(ids, num_samples, red_bits)
        _prefetch_ids(ids, num_samples, ill_bits)
    code, pos = _check_batch_ids(ids, num_samples, drop_bits, check_drop)
    if code != 0:
        return code, pos, 0.0
    total, bad = loss_stats(losses)
    if bad >= 0:
        return 4, bad, 0.0
    if collect:
        _select_batch(ids, losses, k_low, k_high, key_low, key_high, red_bits, ill_bits)
    if mark_seen:  # repeats are counted at end_epoch: records - distinct ids seen
        for i in range(ids.shape[0]):
            j = ids[i]
            seen_bits[j >> 3] |= np.uint8(1 << (j & 7))
    return 0, -1, total


def record_batch(ids: np.ndarray, losses: np.ndarray, num_samples: int,
                 drop_bits: np.ndarray | None, collect: bool, k_low: int, k_high: int,
                 key_low: np.uint64, key_high: np.uint64, red_bits: np.ndarray,
                 ill_bits: np.ndarray, seen_bits: np.ndarray | None) -> tuple[int, int, float]:
    """The whole per-batch work of `ScanPruner.record` in one kernel call: validate ids (codes
    1 out of range, 2 repeated, 3 pruned this epoch), check losses are finite (code 4), sum
    the per-sample view means, with `collect` mark the batch's candidates, and set the ids in
    the epoch's `seen_bits` unless it is None (the coverage check of `end_epoch`). Nothing is
    changed when a check fails. ids: (B,) int64 contiguous; losses: (V, B) float32 or float64
    contiguous. Returns (code, position, sum of per-sample mean losses)."""
    check_drop, mark_seen = drop_bits is not None, seen_bits is not None
    drop_bits = drop_bits if check_drop else _EMPTY
    seen_bits = seen_bits if mark_seen else _EMPTY
    if _NO_JIT:
        with errstate():
            return _record_batch(ids, losses, num_samples, drop_bits, check_drop, collect, k_low,
                                 k_high, key_low, key_high, red_bits, ill_bits, seen_bits,
                                 mark_seen)
    return _record_batch(ids, losses, num_samples, drop_bits, check_drop, collect, k_low, k_high,
                         key_low, key_high, red_bits, ill_bits, seen_bits, mark_seen)
