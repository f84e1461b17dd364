"""The conformance suite (tests/adapters/conformance.py) against JaxAdapter, plus its
PlanSampler: the JAX trainers' epoch-by-epoch face, with the lone-last-sample fold."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

from adapters.jax import JaxAdapter, PlanSampler, fold_lone_last, plan_batches  # noqa: E402
from scan_core import ScanConfig, ScanPruner, ScanStateError  # noqa: E402
from scan_core.errors import ScanConfigError  # noqa: E402
from tests.adapters.conformance import *  # noqa: F401,F403,E402 - the suite's tests
from tests.adapters.conformance import AdapterCase, AgreeingRank  # noqa: E402


@pytest.fixture(scope="module")
def case():
    # float64 / int64 are refused by a JAX without jax_enable_x64 (it would cast them).
    return AdapterCase(
        name="jax", make=JaxAdapter, array=jnp.asarray,
        address=lambda array: array.unsafe_buffer_pointer(),
        dtypes=tuple(np.dtype(d) for d in ("float32", "float16", "int32", "uint8")))


def test_plan_batches_of_the_adapter_are_adapters_jax_plan_batches():
    plan = ScanPruner(97, 2, ScanConfig(seed=9)).plan_epoch(0)
    for rank in range(3):
        ours = JaxAdapter(AgreeingRank(rank, 3)).plan_batches(plan, 8)
        for a, b in zip(ours, plan_batches(plan, 8, rank=rank, world_size=3), strict=True):
            np.testing.assert_array_equal(a, b)


def test_plan_sampler_serves_the_epochs_plan_and_folds_a_lone_last_id():
    pruner = ScanPruner(33, 2, ScanConfig(seed=1))
    sampler = PlanSampler(pruner, seed=1)
    with pytest.raises(ScanStateError, match="set_epoch"):
        sampler.plan
    sampler.set_epoch(0)
    plain = sampler.batches(8)
    assert [len(b) for b in plain] == [8, 8, 8, 8, 1]
    folded = sampler.batches(8, fold_single=True)
    assert [len(b) for b in folded] == [8, 8, 8, 9]
    np.testing.assert_array_equal(np.concatenate(folded), np.concatenate(plain))
    np.testing.assert_array_equal(np.concatenate(plain),
                                  np.concatenate(list(plan_batches(sampler.plan, 8, seed=1))))


def test_plan_sampler_refuses_a_pruner_of_other_ranks():
    pruner = ScanPruner(10, 2, communicator=AgreeingRank(1, 2))
    with pytest.raises(ScanConfigError, match="rank 1 of world_size 2 but the sampler serves "
                                              "rank 0 of world_size 1"):
        PlanSampler(pruner, seed=0)


@pytest.mark.parametrize("lengths, folded", [([4, 4, 1], [4, 5]), ([1], [1]), ([4, 2], [4, 2]),
                                             ([], []), ([3, 1], [4])])
def test_fold_lone_last_joins_only_a_lone_last_id(lengths, folded):
    start = np.cumsum([0, *lengths])
    batches = [np.arange(a, b) for a, b in zip(start[:-1], start[1:])]
    out = fold_lone_last(list(batches))
    assert [len(b) for b in out] == folded
    if lengths:
        np.testing.assert_array_equal(np.concatenate(out), np.arange(start[-1]))
