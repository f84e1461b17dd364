"""Property tests of scan_core.plan.EpochPlan: the kept set and its split over ranks.

`distributed_sampler_indices` below is a plain-Python twin of the index arithmetic of PyTorch's
`torch.utils.data.DistributedSampler.__iter__` / `__init__`, written from its source (no torch
here): `shard` must equal it applied to the kept ids, for every rank, shuffle on and off,
drop_last on and off.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scan_core.errors import ScanConfigError, ScanInputError
from scan_core.plan import EpochPlan, default_permutation


def distributed_sampler_indices(length, rank, world_size, drop_last, order):
    """DistributedSampler's indices for `rank`: `order` is range(length) or its shuffle."""
    if drop_last and length % world_size != 0:
        num_samples = math.ceil((length - world_size) / world_size)
    else:
        num_samples = math.ceil(length / world_size)
    total_size = num_samples * world_size
    indices = list(order)
    if not drop_last:
        padding_size = total_size - len(indices)
        if padding_size <= len(indices):
            indices += indices[:padding_size]
        else:
            indices += (indices * math.ceil(padding_size / len(indices)))[:padding_size]
    else:
        indices = indices[:total_size]
    assert len(indices) == total_size
    return indices[rank:total_size:world_size], num_samples


def perm_fn(seed):
    """A permutation function n -> permutation of range(n), shared by plan and twin."""
    return lambda n: np.random.default_rng(seed).permutation(n)


def make_plan(n, drop_ids, epoch=0, seed=0, weight_ids=None, weight=1.0, use_none=False):
    """A plan dropping `drop_ids` (None drop_bits when use_none and nothing is dropped)."""
    drop = np.zeros(n, dtype=bool)
    drop[np.asarray(drop_ids, dtype=np.int64)] = True
    drop_bits = None if (use_none and not drop.any()) else np.packbits(drop, bitorder="little")
    weight_bits = None
    if weight_ids is not None:
        w = np.zeros(n, dtype=bool)
        w[np.asarray(weight_ids, dtype=np.int64)] = True
        weight_bits = np.packbits(w, bitorder="little")
    return EpochPlan(epoch=epoch, phase="mutate", rho_cur=0.5, num_samples=n,
                     num_candidates=int(drop.sum()), num_kept=int(n - drop.sum()), seed=seed,
                     drop_bits=drop_bits, weight_bits=weight_bits, weight=weight), ~drop


@st.composite
def plans(draw, max_n=300):
    """(plan, kept mask) with a random drop set: empty, all, or any density."""
    n = draw(st.integers(min_value=0, max_value=max_n))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 0.95, 1.0]))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    drop_ids = np.flatnonzero(rng.random(n) < density)
    epoch = draw(st.integers(min_value=0, max_value=100))
    use_none = draw(st.booleans())
    return make_plan(n, drop_ids, epoch=epoch, seed=seed, use_none=use_none)


world_st = st.integers(min_value=1, max_value=8)


@given(plans(), world_st, st.booleans(), st.booleans(), st.integers(0, 2**32 - 1))
def test_shard_equals_distributed_sampler_twin(case, world, shuffle, drop_last, pseed):
    """For every rank, shard() == DistributedSampler's indices applied to the kept ids (the same
    permutation function given to both), and its length is shard_length()."""
    plan, kept_mask = case
    kept = np.flatnonzero(kept_mask)
    order = perm_fn(pseed)(len(kept)) if shuffle else range(len(kept))
    for rank in range(world):
        got = plan.shard(rank, world, shuffle=shuffle, drop_last=drop_last,
                         permutation=perm_fn(pseed))
        idx, per_rank = distributed_sampler_indices(len(kept), rank, world, drop_last, order)
        assert got.dtype == np.int64
        assert got.tolist() == kept[idx].tolist()
        assert len(got) == per_rank == plan.shard_length(world, drop_last)


@given(st.integers(min_value=0, max_value=300), world_st, st.booleans(), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_nothing_pruned_equals_plain_distributed_sampler(n, world, shuffle, drop_last, pseed):
    """With nothing pruned (drop_bits None or all-clear), shard() yields exactly what
    DistributedSampler over range(N) yields."""
    order = perm_fn(pseed)(n) if shuffle else range(n)
    for use_none in (True, False):
        plan, _ = make_plan(n, [], use_none=use_none)
        for rank in range(world):
            want, _ = distributed_sampler_indices(n, rank, world, drop_last, order)
            got = plan.shard(rank, world, shuffle=shuffle, drop_last=drop_last,
                             permutation=perm_fn(pseed))
            assert got.tolist() == want


@given(plans(), world_st, st.booleans())
def test_union_of_shards_is_kept_set(case, world, shuffle):
    """Without drop_last, the union of all ranks' shards is the kept set and all ranks have the
    same length (padding repeats kept ids only)."""
    plan, kept_mask = case
    shards = [plan.shard(r, world, shuffle=shuffle) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    union = set(np.concatenate(shards).tolist()) if shards else set()
    assert union == set(np.flatnonzero(kept_mask).tolist())


@given(plans(), world_st, st.booleans())
def test_drop_last_shards_are_disjoint(case, world, shuffle):
    """With drop_last, ranks get equal, disjoint shards of the kept set, floor(n / R) each."""
    plan, kept_mask = case
    shards = [plan.shard(r, world, shuffle=shuffle, drop_last=True) for r in range(world)]
    flat = np.concatenate(shards)
    n = int(kept_mask.sum())
    assert all(len(s) == n // world for s in shards)
    assert len(set(flat.tolist())) == len(flat)
    assert set(flat.tolist()) <= set(np.flatnonzero(kept_mask).tolist())


@given(st.integers(min_value=1, max_value=7), st.booleans())
def test_fewer_kept_than_ranks(n_kept, drop_last):
    """With fewer kept samples than ranks (R = 8), every rank still gets the same length: one
    padded sample each, or none with drop_last."""
    plan, _ = make_plan(20, list(range(n_kept, 20)))
    shards = [plan.shard(r, 8, drop_last=drop_last) for r in range(8)]
    assert {len(s) for s in shards} == {0 if drop_last else 1}


@given(world_st, st.booleans(), st.booleans())
def test_empty_kept_set(world, shuffle, drop_last):
    """Dropping everything gives empty shards on every rank."""
    plan, _ = make_plan(13, list(range(13)))
    for r in range(world):
        assert len(plan.shard(r, world, shuffle=shuffle, drop_last=drop_last)) == 0
    assert plan.shard_length(world, drop_last) == 0


@given(plans(), world_st)
def test_default_shuffle_is_shared_by_ranks(case, world):
    """The default shuffle is default_permutation(seed, epoch, n), the same on every rank and on
    every call, so the ranks' shards still partition the (padded) kept set."""
    plan, kept_mask = case
    kept = np.flatnonzero(kept_mask)
    order = default_permutation(plan.seed, plan.epoch, len(kept))
    assert sorted(order.tolist()) == list(range(len(kept)))
    for r in range(world):
        want, _ = distributed_sampler_indices(len(kept), r, world, False, order)
        assert plan.shard(r, world).tolist() == kept[want].tolist()
        assert plan.shard(r, world).tolist() == plan.shard(r, world).tolist()


@given(plans())
def test_kept_ids_and_counts(case):
    """kept_ids are the sorted ids not dropped; num_kept, num_pruned, pruned_share and
    keep_fraction agree with them."""
    plan, kept_mask = case
    assert plan.kept_ids.tolist() == np.flatnonzero(kept_mask).tolist()
    assert plan.num_kept == len(plan.kept_ids)
    assert plan.num_pruned == plan.num_samples - plan.num_kept
    if plan.num_samples:
        assert plan.pruned_share == pytest.approx(plan.num_pruned / plan.num_samples)
        assert plan.keep_fraction == pytest.approx(plan.num_kept / plan.num_samples)
    else:
        assert plan.pruned_share == 0.0


@given(plans(), st.integers(min_value=0, max_value=2**32 - 1))
def test_keep_mask_agrees_with_kept_ids(case, seed):
    """keep_mask(ids) is True exactly for ids in kept_ids, for any ids (repeats, any order,
    any integer dtype)."""
    plan, _ = case
    n = plan.num_samples
    ids = np.random.default_rng(seed).integers(0, max(n, 1), size=50) if n else np.empty(0, int)
    kept = set(plan.kept_ids.tolist())
    for dtype in (np.int64, np.int32, np.uint32):
        got = plan.keep_mask(ids.astype(dtype))
        assert got.dtype == bool
        assert got.tolist() == [int(i) in kept for i in ids]


@given(plans(), st.integers(min_value=1, max_value=400))
def test_iter_kept_ids_agrees_with_kept_ids(case, chunk):
    """iter_kept_ids yields non-empty ascending chunks of at most chunk_size ids whose
    concatenation is kept_ids."""
    plan, _ = case
    chunks = list(plan.iter_kept_ids(chunk))
    assert all(0 < len(c) <= chunk for c in chunks)
    flat = np.concatenate(chunks).tolist() if chunks else []
    assert flat == plan.kept_ids.tolist()


@given(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=2**32 - 1),
       st.floats(min_value=1.0, max_value=10.0))
def test_loss_weights(n, seed, weight):
    """loss_weights is float32: `weight` on weight_bits ids, 1 elsewhere; all 1 without them."""
    rng = np.random.default_rng(seed)
    w_ids = np.flatnonzero(rng.random(n) < 0.4)
    plan, _ = make_plan(n, [], weight_ids=w_ids, weight=weight)
    ids = np.arange(n)
    got = plan.loss_weights(ids)
    want = np.where(np.isin(ids, w_ids), np.float32(weight), np.float32(1.0))
    assert got.dtype == np.float32 and np.array_equal(got, want)
    plain, _ = make_plan(n, [])
    assert np.array_equal(plain.loss_weights(ids), np.ones(n, np.float32))


@given(plans())
def test_fingerprint_equal_for_equal_plans(case):
    """Two plans built independently from the same epoch and drop set share a fingerprint, a
    16-hex-digit string."""
    plan, kept_mask = case
    twin, _ = make_plan(plan.num_samples, np.flatnonzero(~kept_mask), epoch=plan.epoch,
                        seed=plan.seed, use_none=plan.drop_bits is None)
    assert plan.fingerprint == twin.fingerprint
    assert len(plan.fingerprint) == 16 and int(plan.fingerprint, 16) >= 0


@given(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=2**32 - 1),
       st.data())
def test_fingerprint_differs_when_drop_set_differs(n, seed, data):
    """Plans of the same epoch whose drop sets differ (in one id, or entirely) have different
    fingerprints."""
    rng = np.random.default_rng(seed)
    drop = set(np.flatnonzero(rng.random(n) < 0.5).tolist())
    flip = data.draw(st.integers(min_value=0, max_value=n - 1))
    other = drop ^ {flip}
    a, _ = make_plan(n, sorted(drop))
    b, _ = make_plan(n, sorted(other))
    assert a.fingerprint != b.fingerprint


def test_fingerprint_depends_on_kept_set_not_representation():
    """The fingerprint digests (epoch, kept set, weights): a plan with drop_bits None and one
    with an all-clear drop bitmap keep the same set, so their fingerprints are equal."""
    a, _ = make_plan(100, [], use_none=True)
    b, _ = make_plan(100, [], use_none=False)
    assert a.drop_bits is None and b.drop_bits is not None
    assert a.kept_ids.tolist() == b.kept_ids.tolist()
    assert a.fingerprint == b.fingerprint


def test_fingerprint_differs_between_epochs():
    """The epoch is part of the fingerprint."""
    a, _ = make_plan(50, [1, 2, 3], epoch=4)
    b, _ = make_plan(50, [1, 2, 3], epoch=5)
    assert a.fingerprint != b.fingerprint


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("rank,world", [(0, 0), (0, -1), (1, 1), (-1, 4), (4, 4), (0, True),
                                        (True, 2), (0, 2.0), (0.0, 2)])
def test_shard_rejects_bad_rank_or_world(rank, world):
    """rank outside [0, world_size), world_size < 1 or non-int raise ScanConfigError naming
    the argument."""
    plan, _ = make_plan(10, [1])
    bad = "world_size" if (isinstance(world, bool) or not isinstance(world, int) or world < 1) \
        else "rank"
    with pytest.raises(ScanConfigError, match=bad):
        plan.shard(rank, world)


@pytest.mark.parametrize("world", [0, -3, True])
def test_shard_length_rejects_bad_world(world):
    """shard_length checks world_size too."""
    plan, _ = make_plan(10, [1])
    with pytest.raises(ScanConfigError, match="world_size"):
        plan.shard_length(world)


@pytest.mark.parametrize("perm", [lambda n: np.arange(n + 1), lambda n: np.arange(max(n - 1, 0)),
                                  lambda n: np.arange(n).reshape(1, n)])
def test_shard_rejects_wrong_permutation_shape(perm):
    """A permutation function returning the wrong shape raises ScanInputError."""
    plan, _ = make_plan(10, [1, 2])
    with pytest.raises(ScanInputError, match="permutation"):
        plan.shard(0, 2, permutation=perm)


def test_keep_mask_rejects_bad_ids():
    """keep_mask / loss_weights reject float ids and ids outside [0, N) with ScanInputError."""
    plan, _ = make_plan(10, [1, 2])
    for call in (plan.keep_mask, plan.loss_weights):
        with pytest.raises(ScanInputError, match="integers"):
            call(np.array([0.0, 1.0]))
        with pytest.raises(ScanInputError, match=r"\[0, 10\)"):
            call(np.array([0, 10]))
        with pytest.raises(ScanInputError, match=r"\[0, 10\)"):
            call(np.array([-1, 3]))


@pytest.mark.parametrize("chunk", [0, -1])
def test_iter_kept_ids_rejects_bad_chunk(chunk):
    """chunk_size < 1 raises ScanConfigError naming chunk_size."""
    plan, _ = make_plan(10, [1])
    with pytest.raises(ScanConfigError, match="chunk_size"):
        list(plan.iter_kept_ids(chunk))
