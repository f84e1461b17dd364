"""ScanSampler: DistributedSampler's exact semantics over the kept ids."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler

from adapters.torch import ScanSampler
from scan_core import ScanConfig, ScanPruner, ScanStateError
from scan_core.errors import ScanConfigError


class AgreeingRank:
    """The communicator of one rank of `world_size` whose peers hold the same state: every
    reduction returns its input. Enough for samplers, which never end an epoch here."""

    def __init__(self, rank, world_size):
        self.rank, self.world_size = rank, world_size

    def all_reduce(self, array, op):
        return np.array(array, copy=True)


def as_rank(state, rank, world):
    """A pruner of rank `rank` of `world` holding `state` (a state_dict of world size 1)."""
    pruner = ScanPruner(state["num_samples"], 2, ScanConfig.from_dict(dict(state["config"])),
                        communicator=AgreeingRank(rank, world))
    pruner.load_state_dict({**state, "world_size": world})
    return pruner


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


@given(n=st.integers(1, 300), world=st.integers(1, 5), seed=st.integers(0, 2**31),
       epoch=st.integers(0, 50), shuffle=st.booleans(), drop_last=st.booleans())
def test_unpruned_epochs_equal_distributed_sampler(n, world, seed, epoch, shuffle, drop_last):
    """With nothing pruned, every rank yields exactly what DistributedSampler yields for the
    same seed, epoch, shuffle and drop_last, and has the same length."""
    pruner = ScanPruner(n, 2, ScanConfig(seed=0, warmup_epochs=epoch + 1))
    for e in range(epoch):  # bring the pruner to `epoch` through warm-up epochs
        pruner.plan_epoch(e)
        pruner.record(np.arange(n), np.ones((2, n)))
        pruner.end_epoch()
    state = pruner.state_dict()
    for rank in range(world):
        ours = ScanSampler(as_rank(state, rank, world), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                           drop_last=drop_last)
        ours.set_epoch(epoch)
        theirs = DistributedSampler(_Sized(n), num_replicas=world, rank=rank, shuffle=shuffle,
                                    seed=seed, drop_last=drop_last)
        theirs.set_epoch(epoch)
        assert list(ours) == list(theirs)
        assert len(ours) == len(theirs)


def _run_to_mutation(n=2000, seed=3):
    rng = np.random.default_rng(seed)
    pruner = ScanPruner(n, 2, ScanConfig(warmup_epochs=0, seed=seed))
    pruner.plan_epoch(0)
    for ids in np.array_split(rng.permutation(n), 20):
        pruner.record(ids, rng.random((2, len(ids))))
    pruner.end_epoch()
    return pruner


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_pruned_epoch_serves_only_kept_ids_with_equal_lengths(world, drop_last):
    pruner = _run_to_mutation()
    state = pruner.state_dict()
    samplers = [ScanSampler(as_rank(state, r, world), num_replicas=world, rank=r,
                            drop_last=drop_last) for r in range(world)]
    for s in samplers:
        s.set_epoch(1)
    plan = pruner.plan_epoch(1)
    assert plan.num_kept < 2000
    served = [list(s) for s in samplers]
    assert len({len(x) for x in served}) == 1 and len(served[0]) == len(samplers[0])
    flat = np.concatenate(served)
    assert plan.keep_mask(flat).all()
    if not drop_last:
        assert set(flat.tolist()) == set(plan.kept_ids.tolist())
        assert len(flat) - plan.num_kept == (-plan.num_kept) % world


def test_iterating_without_set_epoch_raises():
    sampler = ScanSampler(ScanPruner(10, 2))
    with pytest.raises(ScanStateError, match="set_epoch"):
        list(sampler)
    with pytest.raises(ScanStateError, match="set_epoch"):
        len(sampler)


def test_a_dataloader_serves_the_plan():
    pruner = _run_to_mutation(n=500)
    sampler = ScanSampler(pruner)
    sampler.set_epoch(1)
    loader = torch.utils.data.DataLoader(torch.arange(500), sampler=sampler, batch_size=64)
    seen = torch.cat(list(loader)).numpy()
    assert sorted(seen.tolist()) == pruner.plan_epoch(1).kept_ids.tolist()


def test_batches_cover_the_shard_in_order():
    pruner = _run_to_mutation(n=500)
    sampler = ScanSampler(as_rank(pruner.state_dict(), 1, 2), num_replicas=2, rank=1)
    sampler.set_epoch(1)
    assert np.concatenate(list(sampler.batches(64))).tolist() == list(sampler)
    assert all(len(b) == 64 for b in sampler.batches(64, drop_last=True))


def test_rank_and_world_mismatch_are_refused():
    with pytest.raises(ScanConfigError, match="rank"):
        ScanSampler(ScanPruner(10, 2), num_replicas=2, rank=2)


@pytest.mark.parametrize("pruner_world, pruner_rank, replicas, rank", [
    (1, 0, 2, 0), (1, 0, 2, 1), (2, 0, 2, 1), (2, 1, 1, 0), (3, 0, 2, 0)])
def test_a_pruner_of_another_world_or_rank_is_refused(pruner_world, pruner_rank, replicas, rank):
    """fails on main: ScanSampler(num_replicas=2) took a pruner built without a communicator;
    in two processes the ranks' D' then differed and a third of the data was never served."""
    pruner = ScanPruner(100, 2, communicator=AgreeingRank(pruner_rank, pruner_world))
    with pytest.raises(ScanConfigError, match=f"rank {pruner_rank} of world_size {pruner_world}"):
        ScanSampler(pruner, num_replicas=replicas, rank=rank)


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_is_a_reiterable_sized_batch_sampler(drop_last):
    """fails on main: len(loader) raised TypeError and a second pass yielded nothing."""
    pruner = _run_to_mutation(n=500)
    sampler = ScanSampler(pruner)
    batch_sampler = sampler.batches(64, drop_last=drop_last)
    loader = torch.utils.data.DataLoader(torch.arange(500), batch_sampler=batch_sampler)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        plan = pruner.plan_epoch(epoch)
        want = plan.num_kept // 64 if drop_last else -(-plan.num_kept // 64)
        assert len(loader) == len(batch_sampler) == want
        for _ in range(2):  # the same epoch twice: the same batches, not nothing
            got = [b.numpy() for b in loader]
            assert len(got) == want
            flat = np.concatenate(got)
            assert flat.tolist() == sampler.indices()[:len(flat)].tolist()
            if not drop_last:
                assert sorted(flat.tolist()) == plan.kept_ids.tolist()
        for ids in got:
            pruner.record(ids, np.ones((2, len(ids))))
        pruner.end_epoch()


def test_batches_refuses_a_bad_batch_size():
    sampler = ScanSampler(ScanPruner(10, 2))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ScanConfigError, match="batch_size"):
            sampler.batches(bad)
