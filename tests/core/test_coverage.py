"""Coverage: every kept id is recorded once per epoch, or the pruner says so with counts
(issue 15, items 3 and 5).

Invariants (one test each):
- Serving each rank's `plan.shard` once, in batches, with or without DistributedSampler's
  padding and drop_last, raises no coverage warning, on any number of ranks.
- A batch recorded twice, or a share of the kept ids never recorded, gives a
  ScanCoverageWarning (default) or ScanCoverageError (coverage="error") naming the counts;
  an error leaves the epoch open and the pruner unchanged.
- realised_saving counts the sample-visits recorded (padding repeats in, drop_last cuts out).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scan_core import (ScanConfig, ScanConfigError, ScanCoverageError, ScanCoverageWarning,
                       ScanPruner, run_ranks)
from tests.core.streams import LossStream, batches

STREAM = LossStream(seed=21)


def serve_epoch(pruner, epoch, batch_size, *, rank=0, world=1, drop_last=False,
                drop_last_batch=False, twice=(), skip_share=0.0):
    """One epoch as a loader serves it; returns the number of samples recorded here."""
    plan = pruner.plan_epoch(epoch)
    ids = plan.shard(rank, world, drop_last=drop_last)
    if skip_share:
        ids = ids[: int(len(ids) * (1 - skip_share))]
    served = 0
    for i, batch in enumerate(batches(ids, batch_size)):
        if drop_last_batch and len(batch) < batch_size:
            break
        for _ in range(2 if i in twice else 1):
            pruner.record(batch, STREAM.losses(epoch, batch))
            served += len(batch)
    return served


def test_the_same_batch_recorded_twice_warns_with_counts():
    """fails on main: num_recorded read 2,100 for N = 2,000 and nothing was said."""
    pruner = ScanPruner(2000, 2, ScanConfig(seed=1))
    serve_epoch(pruner, 0, 100, twice={3})
    with pytest.warns(ScanCoverageWarning, match="100 records repeat an id") as rec:
        summary = pruner.end_epoch()
    assert "2100 records of 2000 distinct ids" in str(rec[0].message)
    assert summary.num_recorded == 2100 and summary.num_repeated == 100
    assert summary.num_unrecorded == 0


def test_a_third_of_the_data_never_recorded_warns_with_counts():
    """fails on main: losing a third of every epoch went unnoticed."""
    pruner = ScanPruner(3000, 2, ScanConfig(seed=1))
    serve_epoch(pruner, 0, 100, skip_share=1 / 3)
    with pytest.warns(ScanCoverageWarning, match="1000 of the 3000 kept ids were never recorded"):
        summary = pruner.end_epoch()
    assert summary.num_unrecorded == 1000 and summary.num_recorded == 2000


def test_coverage_error_refuses_the_epoch_and_leaves_it_open():
    pruner = ScanPruner(1000, 2, ScanConfig(seed=1), coverage="error")
    ref = ScanPruner(1000, 2, ScanConfig(seed=1))
    serve_epoch(ref, 0, 100)
    plan = pruner.plan_epoch(0)
    shard = plan.shard(0, 1)
    for batch in batches(shard[:700], 100):
        pruner.record(batch, STREAM.losses(0, batch))
    with pytest.raises(ScanCoverageError, match="300 of the 1000 kept ids"):
        pruner.end_epoch()
    assert pruner.next_epoch == 0 and pruner.log == []
    for batch in batches(shard[700:], 100):  # the loader catches up; the epoch closes
        pruner.record(batch, STREAM.losses(0, batch))
    assert pruner.end_epoch() == ref.end_epoch()


def test_coverage_policy_is_validated_and_off_is_silent():
    with pytest.raises(ScanConfigError, match="coverage must be one of"):
        ScanPruner(10, 2, coverage="loud")
    pruner = ScanPruner(1000, 2, ScanConfig(seed=1), coverage="off")
    serve_epoch(pruner, 0, 100, twice={0, 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = pruner.end_epoch()
    assert summary.num_recorded == 1200  # not checked: no seen bitmap is kept
    assert summary.num_repeated == summary.num_unrecorded == 0


def test_a_rank_serving_the_whole_plan_as_if_alone_is_caught():
    """Item 2's symptom seen from the core: two ranks that each serve everything."""
    def body(comm):
        pruner = ScanPruner(600, 2, ScanConfig(seed=2), communicator=comm)
        serve_epoch(pruner, 0, 50, rank=0, world=1)
        return pruner.end_epoch()

    # (warnings are caught process-wide, so outside the rank threads)
    with pytest.warns(ScanCoverageWarning, match="600 records repeat an id"):
        summaries = run_ranks(2, body)
    assert all(s.num_repeated == 600 and s.num_recorded == 1200 for s in summaries)


@given(n=st.integers(1, 400), world=st.integers(1, 4), batch=st.integers(1, 64),
       drop_last=st.booleans(), drop_last_batch=st.booleans())
def test_serving_the_shards_once_is_never_flagged_and_saving_counts_what_was_served(
        n, world, batch, drop_last, drop_last_batch):
    def body(comm):
        pruner = ScanPruner(n, 2, ScanConfig(seed=3, warmup_epochs=1), communicator=comm)
        served = []
        for epoch in range(4):
            got = serve_epoch(pruner, epoch, batch, rank=comm.rank, world=world,
                              drop_last=drop_last, drop_last_batch=drop_last_batch)
            served.append(got)
            if got == 0 and epoch < 2:
                return None  # nothing served (drop_last ate everything): nothing to check
            pruner.end_epoch()
        return pruner, served

    with warnings.catch_warnings():  # process-wide, so outside the rank threads
        warnings.simplefilter("error", ScanCoverageWarning)
        results = run_ranks(world, body)
    if results[0] is None:
        return
    pruner = results[0][0]
    per_epoch = [sum(r[1][e] for r in results) for e in range(4)]
    plans_kept = [row["num_kept"] for row in pruner.log]
    visits = sum(served if served else kept for served, kept in zip(per_epoch, plans_kept))
    assert pruner.log[-1]["realised_saving"] == pytest.approx(1 - visits / (4 * n), abs=1e-12)
    for row, got in zip(pruner.log, per_epoch):
        assert row["num_recorded"] == got


def test_drop_last_saving_counts_the_visits_served_not_the_plan():
    """fails on main (item 5): with drop_last the saving counted the plan's visits."""
    n, batch = 1000, 64
    pruner = ScanPruner(n, 2, ScanConfig(seed=4))
    served = [serve_epoch(pruner, 0, batch, drop_last_batch=True)]
    pruner.end_epoch()
    assert served[0] == (n // batch) * batch == 960
    assert pruner.log[-1]["realised_saving"] == pytest.approx(1 - 960 / 1000, abs=1e-12)


def test_an_unrecorded_mutation_epoch_counts_its_plan_and_is_not_checked():
    pruner = ScanPruner(500, 2, ScanConfig(seed=5, warmup_epochs=1))
    for epoch in range(2):
        serve_epoch(pruner, epoch, 50)
        pruner.end_epoch()
    plan = pruner.plan_epoch(2)
    assert plan.phase == "mutate" and plan.num_kept < 500
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = pruner.end_epoch()
    assert summary.num_recorded == 0 and summary.num_unrecorded == 0
    assert summary.realised_saving == pytest.approx(1 - (1000 + plan.num_kept) / 1500)
    assert math.isclose(summary.pruned_share, 1 - plan.num_kept / 500)
