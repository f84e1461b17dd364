"""The one conformance suite of adapters.protocol.FrameworkAdapter, run against every adapter.

Each adapter's test module (tests/adapters/{torch,jax}/test_conformance.py,
tests/adapters/test_conformance_host.py) imports these tests and defines a module-scoped
fixture `case` returning an `AdapterCase`. The torch and the JAX run stay in separate pytest
processes (the Makefile's `test` target: DataLoader workers must not fork under JAX's threads).

Invariants (one test each; hypothesis where the input space is large):
- It is a FrameworkAdapter; rank and world size are its communicator's; a communicator whose
  rank lies outside its world is refused.
- to_numpy keeps dtype, shape and values, and hands over the framework's host buffer itself
  (no copy) where the array lives in host memory.
- Over the ranks of a world, a plan's batches serve every kept id once, plus exactly
  DistributedSampler's padding (drop_last=False), or never twice in full batches
  (drop_last=True); no pruned id; every rank serves `num_batches` batches of batch_size ids
  (the last one shorter without drop_last).
- A rank's batches, concatenated, are `plan.shard(rank, world)` under the adapter's shuffle;
  the order is a function of (seed, epoch), and another epoch shuffles differently.
- The communicator reduces by sum / max / bitwise or into a new array of the input's dtype and
  shape, leaving the input alone, and refuses any other op.
- Driving ScanPruner through the adapter on two simulated ranks covers every kept id of every
  epoch exactly once (coverage="error").
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.protocol import FrameworkAdapter
from scan_core import EpochPlan, ScanConfig, ScanPruner, bitset, run_ranks
from scan_core.comm import Communicator
from scan_core.errors import ScanConfigError


@dataclasses.dataclass(frozen=True)
class AdapterCase:
    """How the suite drives one framework's adapter.

    make: builds the adapter (communicator=None: its default for one process).
    array: a host numpy array -> the framework's array holding the same values in host memory.
    address: a framework array -> the address of its first byte (to prove no copy).
    dtypes: the numpy dtypes the framework holds as host arrays.
    """

    name: str
    make: Callable[..., FrameworkAdapter]
    array: Callable[[np.ndarray], Any]
    address: Callable[[Any], int]
    dtypes: tuple[np.dtype, ...]


class AgreeingRank:
    """Rank `rank` of `world_size` whose peers hold the same input: every reduction is the
    identity. Enough to serve batches, which never reduce."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def all_reduce(self, array: np.ndarray, op: str) -> np.ndarray:
        return np.array(array, copy=True)


@st.composite
def plans(draw: Any) -> EpochPlan:
    """An EpochPlan over N <= 300 samples with any share of them dropped."""
    n = draw(st.integers(1, 300))
    dropped = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n - 1))
    drop = bitset.from_ids(np.asarray(dropped, dtype=np.int64), n) if dropped else None
    return EpochPlan(epoch=draw(st.integers(0, 40)), phase="mutate" if dropped else "warmup",
                     rho_cur=0.5 if dropped else 0.0, num_samples=n,
                     num_candidates=len(dropped), num_kept=n - len(dropped),
                     seed=draw(st.integers(0, 2**31)), drop_bits=drop)


def _served(case: AdapterCase, plan: EpochPlan, batch_size: int, world: int, **kw: Any
            ) -> list[list[np.ndarray]]:
    adapters = [case.make(AgreeingRank(rank, world)) for rank in range(world)]
    return [list(a.plan_batches(plan, batch_size, **kw)) for a in adapters]


# -- the contract's face ----------------------------------------------------------------------
def test_it_is_a_framework_adapter_whose_ranks_are_its_communicators(case):
    alone = case.make()
    assert isinstance(alone, FrameworkAdapter)
    assert (alone.rank, alone.world_size) == (0, 1)
    assert isinstance(alone.communicator(), Communicator)
    assert alone.communicator() is alone.communicator()
    comm = AgreeingRank(2, 3)
    third = case.make(comm)
    assert (third.rank, third.world_size) == (2, 3) and third.communicator() is comm


@pytest.mark.parametrize("rank, world", [(2, 2), (-1, 2), (0, 0)])
def test_a_communicator_outside_its_world_is_refused(case, rank, world):
    with pytest.raises(ScanConfigError, match=f"rank {rank} of world_size {world}"):
        case.make(AgreeingRank(rank, world))


# -- to_numpy ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0,), (5,), (3, 4), (2, 1, 3)])
def test_to_numpy_keeps_dtype_shape_and_values(case, shape):
    adapter = case.make()
    rng = np.random.default_rng(0)
    for dtype in case.dtypes:
        host = (rng.random(shape) * 100).astype(dtype)
        out = adapter.to_numpy(case.array(host))
        assert isinstance(out, np.ndarray)
        assert (out.dtype, out.shape) == (host.dtype, host.shape), dtype
        np.testing.assert_array_equal(out, host)


def test_to_numpy_hands_over_the_host_buffer_without_a_copy(case):
    adapter = case.make()
    for dtype in case.dtypes:
        framework_array = case.array(np.arange(12).reshape(3, 4).astype(dtype))
        out = adapter.to_numpy(framework_array)
        assert out.ctypes.data == case.address(framework_array), dtype
        assert np.shares_memory(out, adapter.to_numpy(framework_array))


# -- serving a plan ---------------------------------------------------------------------------
layouts = dict(plan=plans(), batch_size=st.integers(1, 64), world=st.integers(1, 4),
               shuffle=st.booleans())


@given(**layouts)
def test_every_kept_id_is_served_once_plus_distributed_samplers_padding(case, plan, batch_size,
                                                                        world, shuffle):
    ranks = _served(case, plan, batch_size, world, shuffle=shuffle)
    counts = Counter(np.concatenate([b for r in ranks for b in r]).tolist())
    assert set(counts) == set(plan.kept_ids.tolist())
    padding = world * plan.shard_length(world) - plan.num_kept
    assert sum(c - 1 for c in counts.values()) == padding


@given(**layouts)
def test_with_drop_last_no_id_is_served_twice_and_every_batch_is_full(case, plan, batch_size,
                                                                      world, shuffle):
    ranks = _served(case, plan, batch_size, world, shuffle=shuffle, drop_last=True)
    served = np.concatenate([b for r in ranks for b in r] or [np.zeros(0, np.int64)])
    assert len(np.unique(served)) == len(served)
    assert all(len(b) == batch_size for r in ranks for b in r)
    assert plan.num_kept - len(served) < world * (batch_size + 1)  # only the uneven tail


@given(**layouts, drop_last=st.booleans())
def test_every_rank_serves_num_batches_of_kept_ids(case, plan, batch_size, world, shuffle,
                                                   drop_last):
    expected = case.make(AgreeingRank(0, world)).num_batches(plan, batch_size,
                                                             drop_last=drop_last)
    for batches in _served(case, plan, batch_size, world, shuffle=shuffle, drop_last=drop_last):
        assert len(batches) == expected
        for i, batch in enumerate(batches):
            assert batch.dtype == np.int64 and batch.ndim == 1
            assert len(batch) == batch_size or (i == expected - 1 and 0 < len(batch))
            assert plan.keep_mask(batch).all()


@given(plan=plans(), batch_size=st.integers(1, 64), drop_last=st.booleans())
def test_rank_r_of_two_serves_the_plans_shard_r_under_its_shuffle(case, plan, batch_size,
                                                                  drop_last):
    for rank in range(2):
        adapter = case.make(AgreeingRank(rank, 2))
        batches = list(adapter.plan_batches(plan, batch_size, drop_last=drop_last))
        shard = plan.shard(rank, 2, drop_last=drop_last,
                           permutation=adapter.permutation(plan.seed, plan.epoch))
        stop = len(shard) - len(shard) % batch_size if drop_last else len(shard)
        served = np.concatenate(batches) if batches else np.zeros(0, np.int64)
        np.testing.assert_array_equal(served, shard[:stop])


def test_the_order_is_a_function_of_seed_and_epoch(case):
    pruner = ScanPruner(200, 2, ScanConfig(seed=5, warmup_epochs=3))
    plan0 = pruner.plan_epoch(0)
    pruner.record(np.arange(200), np.ones((2, 200)))
    pruner.end_epoch()
    plan1 = pruner.plan_epoch(1)

    def order(plan, **kw):
        return np.concatenate(list(case.make().plan_batches(plan, 16, **kw)))

    np.testing.assert_array_equal(order(plan0), order(plan0))
    np.testing.assert_array_equal(order(plan0), order(plan0, seed=5))  # the run's seed
    assert not np.array_equal(order(plan0), order(plan1))
    assert not np.array_equal(order(plan0), order(plan0, seed=6))
    np.testing.assert_array_equal(order(plan0, shuffle=False), np.arange(200))


@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_a_bad_batch_size_or_seed_is_refused_before_serving(case, bad):
    adapter, plan = case.make(), ScanPruner(10).plan_epoch(0)
    with pytest.raises(ScanConfigError, match="batch_size must be an int >= 1"):
        adapter.plan_batches(plan, bad)
    with pytest.raises(ScanConfigError, match="batch_size must be an int >= 1"):
        adapter.num_batches(plan, bad)
    with pytest.raises(ScanConfigError, match="seed must be an int or None"):
        adapter.plan_batches(plan, 4, seed=1.5)


# -- the communicator -------------------------------------------------------------------------
@pytest.mark.parametrize("op, dtype", [("sum", np.float64), ("sum", np.int64),
                                       ("max", np.float64), ("max", np.int64),
                                       ("bor", np.uint8)])
def test_one_ranks_reduction_is_a_new_array_equal_to_its_input(case, op, dtype):
    values = (np.arange(24).reshape(2, 12) * 37 % 251).astype(dtype)
    before = values.copy()
    out = case.make().communicator().all_reduce(values, op)
    assert (out.dtype, out.shape) == (values.dtype, values.shape)
    np.testing.assert_array_equal(out, before)
    assert not np.shares_memory(out, values)
    np.testing.assert_array_equal(values, before)


def test_an_unknown_reduction_is_refused(case):
    with pytest.raises(ValueError, match="'sum', 'max' or 'bor', got 'min'"):
        case.make().communicator().all_reduce(np.zeros(3), "min")


# -- the whole loop ---------------------------------------------------------------------------
def test_a_pruned_run_on_two_ranks_records_every_kept_id_once(case):
    """Two simulated ranks train through the adapter only: its batches, its to_numpy of the
    framework's ids and losses. coverage="error" makes end_epoch raise on any id unserved or
    served twice beyond the padding, so mutation epochs check the kept-set arithmetic."""
    n, batch_size, epochs = 301, 32, 4

    def body(comm: Communicator) -> list[dict]:
        adapter = case.make(comm)
        pruner = ScanPruner(n, 2, ScanConfig(seed=3, warmup_epochs=0),
                            communicator=adapter.communicator(), coverage="error")
        rng = np.random.default_rng(adapter.rank)
        for epoch in range(epochs):
            plan = pruner.plan_epoch(epoch)
            for ids in adapter.plan_batches(plan, batch_size):
                losses = case.array(rng.random((2, len(ids))).astype(np.float32))
                pruner.record(adapter.to_numpy(case.array(ids)), adapter.to_numpy(losses))
            pruner.end_epoch()
        return pruner.log

    logs = run_ranks(2, body)
    assert logs[0] == logs[1]
    assert any(row["phase"] == "mutate" and row["num_kept"] < n for row in logs[0])
    assert all(row["num_unrecorded"] == 0 for row in logs[0])
