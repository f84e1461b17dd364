"""One test per error scan_core raises on purpose: the class (a ScanError and the builtin a
caller expects) and a message that names the value received."""

from __future__ import annotations

import numpy as np
import pytest

from scan_core import (ScanConfig, ScanConfigError, ScanDistributedError, ScanError,
                       ScanInputError, ScanPruner, ScanResumeError, ScanStateError,
                       ScanStoreCorruptError, ScanStoreError, ScanStoreMismatchError,
                       ScanTargetUnreachableError, ThreadGroup, run_ranks)
from tests.core.streams import LossStream, run

N = 100
STREAM = LossStream(seed=61)


@pytest.fixture
def open_pruner() -> ScanPruner:
    pruner = ScanPruner(N, 2, ScanConfig(seed=1))
    pruner.plan_epoch(0)
    return pruner


def ok_losses(ids, views=2):
    return STREAM.losses(0, np.asarray(ids))[:views]


# -- the family --------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, builtin", [
    (ScanConfigError, ValueError), (ScanInputError, ValueError), (ScanStateError, RuntimeError),
    (ScanStoreError, OSError), (ScanStoreCorruptError, OSError),
    (ScanStoreMismatchError, OSError), (ScanResumeError, RuntimeError),
    (ScanTargetUnreachableError, ValueError), (ScanDistributedError, RuntimeError)])
def test_every_error_is_a_scan_error_and_the_expected_builtin(cls, builtin):
    assert issubclass(cls, ScanError) and issubclass(cls, builtin)


def test_store_errors_are_store_errors():
    assert issubclass(ScanStoreCorruptError, ScanStoreError)
    assert issubclass(ScanStoreMismatchError, ScanStoreError)
    assert issubclass(ScanTargetUnreachableError, ScanConfigError)


# -- losses ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("view", [0, 1])
def test_non_finite_loss_names_the_sample_id(open_pruner, bad, view):
    ids = np.array([7, 42, 13, 99])
    losses = ok_losses(ids)
    losses[view, 2] = bad
    with pytest.raises(ScanInputError, match=r"sample id 13\b"):
        open_pruner.record(ids, losses)


def test_a_rejected_batch_leaves_no_trace(open_pruner):
    ids = np.arange(N)
    losses = ok_losses(ids)
    losses[1, 50] = np.nan
    with pytest.raises(ScanInputError):
        open_pruner.record(ids, losses)
    open_pruner.record(ids, ok_losses(ids))
    summary = open_pruner.end_epoch()
    assert summary.num_recorded == N
    assert summary.mean_loss == pytest.approx(ok_losses(ids).mean())


@pytest.mark.parametrize("shape", [(2, 5), (3, 4), (1, 4), (4,), (4, 2), (2, 4, 1), ()])
def test_losses_of_the_wrong_shape_or_view_count(open_pruner, shape):
    with pytest.raises(ScanInputError, match=r"\(2, 4\)") as info:
        open_pruner.record(np.arange(4), np.ones(shape))
    assert str(shape).replace(",)", ")") in str(info.value).replace(",)", ")")


def test_one_dimensional_losses_only_with_one_view():
    one = ScanPruner(N, 1, ScanConfig())
    one.plan_epoch(0)
    one.record(np.arange(4), np.ones(4))
    one.record(np.arange(4, 8), np.ones((1, 4)))
    assert one.end_epoch().num_recorded == 8
    two = ScanPruner(N, 2, ScanConfig())
    two.plan_epoch(0)
    with pytest.raises(ScanInputError, match=r"\(4,\)"):
        two.record(np.arange(4), np.ones(4))


@pytest.mark.parametrize("dtype", ["U1", "O", "c16", "M8[s]"])
def test_losses_of_a_non_real_dtype(open_pruner, dtype):
    with pytest.raises(ScanInputError, match="dtype"):
        open_pruner.record(np.arange(2), np.zeros((2, 2)).astype(dtype))


# -- ids ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_id", [N, N + 5, -1, -N])
def test_ids_out_of_range_or_negative(open_pruner, bad_id):
    ids = np.array([3, bad_id, 4])
    with pytest.raises(ScanInputError, match=rf"id {bad_id}\b.*\[0, {N}\)"):
        open_pruner.record(ids, np.ones((2, 3)))


def test_ids_repeated_within_a_batch(open_pruner):
    with pytest.raises(ScanInputError, match=r"id 5 is repeated"):
        open_pruner.record(np.array([1, 5, 2, 5]), np.ones((2, 4)))
    # the check leaves nothing behind: the same ids in the next batch are fine
    open_pruner.record(np.array([1, 5, 2]), np.ones((2, 3)))
    open_pruner.record(np.array([1, 5, 2]), np.ones((2, 3)))


@pytest.mark.parametrize("ids", [np.array([1.0, 2.0]), np.array([True, False]),
                                 np.array(["1", "2"]), np.array([1, 2], dtype=object)])
def test_ids_of_a_non_integer_dtype(open_pruner, ids):
    with pytest.raises(ScanInputError, match=str(ids.dtype)):
        open_pruner.record(ids, np.ones((2, 2)))


def test_two_dimensional_ids(open_pruner):
    with pytest.raises(ScanInputError, match=r"\(2, 2\)"):
        open_pruner.record(np.arange(4).reshape(2, 2), np.ones((2, 4)))


def test_ids_the_plan_pruned():
    pruner = ScanPruner(N, 2, ScanConfig(seed=1, warmup_epochs=1))
    run(pruner, 3, STREAM, 10)
    plan = pruner.plan_epoch(3)
    assert plan.phase == "mutate" and plan.num_pruned > 0
    gone = int(np.setdiff1d(np.arange(N), plan.kept_ids)[0])
    ids = np.array([int(plan.kept_ids[0]), gone])
    with pytest.raises(ScanInputError, match=rf"id {gone}\b.*pruned.*epoch 3"):
        pruner.record(ids, np.ones((2, 2)))


def test_unsigned_and_narrow_integer_ids_are_accepted(open_pruner):
    open_pruner.record(np.array([1, 2], np.uint8), np.ones((2, 2)))
    open_pruner.record(np.array([1, 2], np.int16), np.ones((2, 2)))
    open_pruner.record([3, 4], [[1.0, 2.0], [3.0, 4.0]])


# -- order of calls ----------------------------------------------------------------------------

def test_record_outside_an_epoch():
    pruner = ScanPruner(N, 2)
    with pytest.raises(ScanStateError, match="plan_epoch"):
        pruner.record(np.arange(3), np.ones((2, 3)))
    run(pruner, 1, STREAM, 10)
    with pytest.raises(ScanStateError, match="outside an epoch"):
        pruner.record(np.arange(3), np.ones((2, 3)))


def test_end_epoch_twice_or_before_planning():
    pruner = ScanPruner(N, 2)
    with pytest.raises(ScanStateError, match="end_epoch"):
        pruner.end_epoch()
    run(pruner, 1, STREAM, 10)
    with pytest.raises(ScanStateError, match="end_epoch"):
        pruner.end_epoch()
    assert pruner.next_epoch == 1 and len(pruner.log) == 1


def test_plan_epoch_of_the_wrong_epoch():
    pruner = ScanPruner(N, 2)
    for wrong in (1, -1, 5):
        with pytest.raises(ScanStateError, match=rf"plan_epoch\({wrong}\).*next epoch.* 0"):
            pruner.plan_epoch(wrong)
    run(pruner, 2, STREAM, 10)
    with pytest.raises(ScanStateError, match=r"plan_epoch\(1\).* 2"):
        pruner.plan_epoch(1)


def test_plan_epoch_while_another_is_open(open_pruner):
    with pytest.raises(ScanStateError, match=r"plan_epoch\(1\) while epoch 0 is open"):
        open_pruner.plan_epoch(1)


def test_state_dict_mid_epoch(open_pruner):
    with pytest.raises(ScanStateError, match="epoch 0 is open"):
        open_pruner.state_dict()


def test_load_state_dict_mid_epoch(open_pruner):
    state = ScanPruner(N, 2, ScanConfig(seed=1)).state_dict()
    with pytest.raises(ScanStateError, match="open"):
        open_pruner.load_state_dict(state)


def test_end_epoch_with_no_losses_in_a_warmup_epoch():
    pruner = ScanPruner(N, 2)
    pruner.plan_epoch(0)
    with pytest.raises(ScanStateError, match="warmup epoch 0"):
        pruner.end_epoch()


def test_end_epoch_with_no_losses_in_a_preparation_epoch():
    pruner = ScanPruner(N, 2, ScanConfig(warmup_epochs=1))
    run(pruner, 1, STREAM, 10)
    assert pruner.plan_epoch(1).phase == "prepare"
    with pytest.raises(ScanStateError, match="prepare epoch 1"):
        pruner.end_epoch()


def test_coreset_before_any_preparation():
    pruner = ScanPruner(N, 2, ScanConfig(warmup_epochs=2))
    with pytest.raises(ScanStateError, match="preparation"):
        pruner.coreset()
    run(pruner, 2, STREAM, 10)
    with pytest.raises(ScanStateError, match="preparation"):
        pruner.coreset()
    run(pruner, 3, STREAM, 10)
    assert len(pruner.coreset()) < N


def test_candidate_ids_of_an_unknown_end():
    with pytest.raises(ScanConfigError, match="'middle'"):
        ScanPruner(N, 2).candidate_ids("middle")


# -- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize("kw, names", [
    ({"rho_low": 0.6, "rho_high": 0.5}, ["rho_low + rho_high", "0.6", "0.5"]),
    ({"rho_low": -0.1}, ["rho_low", "-0.1"]),
    ({"rho_high": 1.5}, ["rho_high", "1.5"]),
    ({"rho_low": float("nan")}, ["rho_low", "nan"]),
    ({"t_cos": 0}, ["t_cos", "0"]),
    ({"t_cos": -2}, ["t_cos", "-2"]),
    ({"t_cos": 2.0}, ["t_cos", "2.0"]),
    ({"warmup_threshold": -0.01}, ["warmup_threshold", "-0.01"]),
    ({"warmup_threshold": float("inf")}, ["warmup_threshold", "inf"]),
    ({"min_warmup_epochs": -1}, ["min_warmup_epochs", "-1"]),
    ({"min_warmup_epochs": 3, "max_warmup_epochs": 2}, ["max_warmup_epochs=2", "3"]),
    ({"warmup_epochs": -1}, ["warmup_epochs", "-1"]),
    ({"rule": "prune"}, ["rule", "'prune'"]),
    ({"mode": "ill"}, ["mode", "'ill'"]),
    ({"scope": "epoch"}, ["scope", "'epoch'"]),
    ({"global_normalization": "z"}, ["global_normalization", "'z'"]),
    ({"global_ema": 1.0}, ["global_ema", "1.0"]),
    ({"seed": -1}, ["seed", "-1"]),
    ({"seed": 1.5}, ["seed", "1.5"]),
    ({"num_epochs": 0}, ["num_epochs", "0"]),
    ({"full_tail_epochs": 2}, ["full_tail_epochs", "num_epochs"]),
    ({"num_epochs": 4, "full_tail_epochs": 4}, ["full_tail_epochs=4", "num_epochs=4"]),
    ({"rule": "infobatch"}, ["infobatch", "num_epochs"]),
    ({"target_rate": 0.2}, ["target_rate", "num_epochs"]),
    ({"target_rate": 0.0, "num_epochs": 10}, ["target_rate", "0.0"]),
    ({"target_rate": 1.0, "num_epochs": 10}, ["target_rate", "1.0"]),
    ({"target_rate": 0.1, "num_epochs": 10, "rule": "full"}, ["target_rate", "'full'"]),
    ({"target_rate": 0.1, "num_epochs": 10, "mode": "redundant", "rho_low": 0.0},
     ["target_rate", "redundant"]),
    ({"infobatch_prune_ratio": 1.0}, ["infobatch_prune_ratio", "1.0"]),
    ({"infobatch_delta": 1.2}, ["infobatch_delta", "1.2"]),
    ({"ill_every_mutation": 1}, ["ill_every_mutation", "1"]),
])
def test_config_out_of_range_names_field_and_value(kw, names):
    with pytest.raises(ScanConfigError) as info:
        ScanConfig(**kw)
    for name in names:
        assert name in str(info.value), (name, str(info.value))


def test_unknown_config_fields_and_rule_names():
    with pytest.raises(ScanConfigError, match="rho_hi"):
        ScanConfig.from_dict({"rho_hi": 0.3})
    with pytest.raises(ScanConfigError, match="'dropout'"):
        ScanConfig.for_rule("dropout")


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "10", None])
def test_bad_num_samples(value):
    with pytest.raises(ScanConfigError, match=rf"num_samples.*{value!r}".replace("(", r"\(")):
        ScanPruner(value, 2)


@pytest.mark.parametrize("value", [0, -1, 2.0, False])
def test_bad_num_views(value):
    with pytest.raises(ScanConfigError, match=rf"num_views.*{value!r}"):
        ScanPruner(N, value)


def test_config_of_the_wrong_type():
    with pytest.raises(ScanConfigError, match="dict"):
        ScanPruner(N, 2, {"rho_low": 0.3})


def test_loss_history_without_store_or_of_a_bad_dtype(tmp_path):
    with pytest.raises(ScanConfigError, match="store"):
        ScanPruner(N, 2, loss_history="float16")
    with pytest.raises(ScanConfigError, match="'float64'"):
        ScanPruner(N, 2, store=tmp_path / "s.zarr", loss_history="float64")


def test_target_unreachable_names_the_target():
    with pytest.raises(ScanTargetUnreachableError, match="target_rate=0.9"):
        ScanPruner(N, 2, ScanConfig(num_epochs=10, target_rate=0.9))


# -- resume ------------------------------------------------------------------------------------

def test_load_state_dict_of_another_run():
    pruner = ScanPruner(N, 2, ScanConfig(seed=1))
    run(pruner, 2, STREAM, 10)
    state = pruner.state_dict()
    with pytest.raises(ScanResumeError, match="num_samples.*100.*101"):
        ScanPruner(N + 1, 2, ScanConfig(seed=1)).load_state_dict(state)
    with pytest.raises(ScanResumeError, match="config"):
        ScanPruner(N, 2, ScanConfig(seed=2)).load_state_dict(state)
    with pytest.raises(ScanResumeError, match="schema_version 99"):
        ScanPruner(N, 2, ScanConfig(seed=1)).load_state_dict({**state, "schema_version": 99})
    with pytest.raises(ScanResumeError, match="red_bits"):
        ScanPruner(N, 2, ScanConfig(seed=1)).load_state_dict(
            {**state, "red_bits": np.zeros(3, np.uint8)})


def test_load_state_dict_of_another_world_size():
    pruner = ScanPruner(N, 2, ScanConfig(seed=1))
    run(pruner, 1, STREAM, 10)
    state = pruner.state_dict()

    def rank(comm):
        ScanPruner(N, 2, ScanConfig(seed=1), communicator=comm).load_state_dict(state)

    with pytest.raises(ScanResumeError, match="world_size=1"):
        run_ranks(2, rank)


def test_a_reading_rank_finds_no_store(tmp_path):
    # ScanStoreMismatchError, ScanStoreCorruptError and a store's world-size ScanResumeError
    # have their tests in tests/core/test_store.py; this one is the non-writing rank's.
    from scan_core.store import LossStore
    missing = tmp_path / "missing.zarr"
    with pytest.raises(ScanStoreCorruptError, match="no SCAN store.*missing.zarr"):
        LossStore.open(missing, {}, writable=False)


# -- distributed -------------------------------------------------------------------------------

def test_all_reduce_of_different_shapes_across_ranks():
    def rank(comm):
        comm.all_reduce(np.zeros(1 + comm.rank), "sum")

    with pytest.raises(ScanDistributedError, match="shapes"):
        run_ranks(2, rank)


def test_unknown_reduce_op_and_bad_world_size():
    with pytest.raises(ValueError, match="'mean'"):
        run_ranks(1, lambda comm: comm.all_reduce(np.zeros(1), "mean"))
    with pytest.raises(ValueError, match="0"):
        ThreadGroup(0)


# -- plans -------------------------------------------------------------------------------------

def test_plan_arguments():
    plan = ScanPruner(N, 2).plan_epoch(0)
    with pytest.raises(ScanConfigError, match="rank"):
        plan.shard(2, 2)
    with pytest.raises(ScanConfigError, match="world_size"):
        plan.shard(0, 0)
    with pytest.raises(ScanInputError, match=str(N)):
        plan.keep_mask(np.array([N]))
    with pytest.raises(ScanInputError, match="float"):
        plan.loss_weights(np.array([0.5]))
    with pytest.raises(ScanInputError, match=r"\(3,\)"):
        plan.shard(0, 1, permutation=lambda n: np.arange(3))
    with pytest.raises(ScanConfigError, match="chunk_size"):
        next(plan.iter_kept_ids(0))
