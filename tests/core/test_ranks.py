"""Data-parallel SCAN with R simulated ranks (scan_core.comm.run_ranks, one thread per rank).

SPEC.md: each rank selects inside its own local batches and D' is the union over ranks; every
rank ends each epoch holding the identical D' and plans the identical kept set; warm-up is
decided on the global mean loss (the released code decides it on rank-local losses: a bug).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from scan_core import (ScanConfig, ScanDistributedError, ScanPruner, ScanStoreMismatchError,
                       ThreadGroup, run_ranks)
from scan_core.comm import all_or_none
from scan_core.select import SALT_HIGH, SALT_LOW, k_of, select_batch, stream_key
from tests.core.streams import LossStream, plateau_e0, run, run_epoch

pytestmark = pytest.mark.distributed

N, B, E = 403, 25, 10  # N is prime: every R > 1 pads its shards
STREAM = LossStream(seed=71)
CFG = ScanConfig(seed=5, rho_low=0.25, rho_high=0.3)


def rank_run(cfg=CFG, epochs=E, loss_fn=STREAM, shuffle=True, store=None, start=None):
    def body(comm):
        pruner = ScanPruner(N, 2, cfg, communicator=comm, store=store)
        first = pruner.next_epoch if start is None else start
        assert pruner.next_epoch == first
        out = []
        for e in range(first, epochs):
            r = run_epoch(pruner, e, loss_fn, B, rank=comm.rank, world_size=comm.world_size,
                          shuffle=shuffle)
            out.append({"epoch": e, "phase": r.phase, "fingerprint": r.fingerprint,
                        "kept": r.kept_ids, "batches": r.batches,
                        "shard": r.plan.shard(comm.rank, comm.world_size, shuffle=shuffle),
                        "red": pruner.candidate_ids("redundant"),
                        "ill": pruner.candidate_ids("ill_matched"),
                        "e0": pruner.warmup_ended_at, "log": pruner.log})
        return out
    return body


def union_of_local_selections(per_rank_batches, epoch, cfg, loss_fn):
    """D' computed rank by rank with select_batch on each rank's own batches, then OR-ed."""
    words = (N + 7) // 8
    red, ill = np.zeros(words, np.uint8), np.zeros(words, np.uint8)
    for batches in per_rank_batches:
        r_bits, i_bits = np.zeros(words, np.uint8), np.zeros(words, np.uint8)
        for ids in batches:
            losses = np.ascontiguousarray(loss_fn(epoch, ids), dtype=np.float64)
            select_batch(ids.astype(np.int64), losses, k_of(cfg.rho_low, len(ids)),
                         k_of(cfg.rho_high, len(ids)), stream_key(cfg.seed, epoch, SALT_LOW),
                         stream_key(cfg.seed, epoch, SALT_HIGH), r_bits, i_bits)
        red |= r_bits
        ill |= i_bits
    ids_of = lambda bits: np.flatnonzero(  # noqa: E731
        np.unpackbits(bits, count=N, bitorder="little"))
    return ids_of(red), ids_of(ill)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_all_ranks_hold_identical_plans_and_dprime(world_size):
    results = run_ranks(world_size, rank_run())
    ref = results[0]
    assert any(r["phase"] == "mutate" for r in ref) and any(r["phase"] == "prepare" for r in ref)
    for rank_out in results[1:]:
        for a, b in zip(ref, rank_out):
            assert a["fingerprint"] == b["fingerprint"], a["epoch"]
            np.testing.assert_array_equal(a["kept"], b["kept"])
            np.testing.assert_array_equal(a["red"], b["red"])
            np.testing.assert_array_equal(a["ill"], b["ill"])
            assert a["log"] == b["log"]
    for i, epoch in enumerate(ref):
        shards = [res[i]["shard"] for res in results]
        # equal batches per rank (DDP hangs otherwise), and together they cover the kept set
        assert len({len(s) for s in shards}) == 1
        np.testing.assert_array_equal(np.unique(np.concatenate(shards)), epoch["kept"])
        if epoch["phase"] == "prepare":
            red, ill = union_of_local_selections([res[i]["batches"] for res in results],
                                                 epoch["epoch"], CFG, STREAM)
            np.testing.assert_array_equal(epoch["red"], red)
            np.testing.assert_array_equal(epoch["ill"], ill)


def test_dprime_depends_on_how_batches_are_split_over_ranks():
    # the union is of rank-local selections: R = 2 is not R = 1 run on the same samples
    one = run_ranks(1, rank_run(epochs=5))[0]
    two = run_ranks(2, rank_run(epochs=5))[0]
    assert one[-1]["e0"] == two[-1]["e0"]
    prep = [i for i, r in enumerate(one) if r["phase"] == "prepare"][0]
    assert not np.array_equal(one[prep]["red"], two[prep]["red"])


def test_one_rank_equals_the_single_process_pruner():
    ranked = run_ranks(1, rank_run())[0]
    single = ScanPruner(N, 2, CFG)
    recs = run(single, E, STREAM, B)
    assert [r["fingerprint"] for r in ranked] == [r.fingerprint for r in recs]
    assert ranked[-1]["log"] == single.log


def split_loss(epoch: int, ids: np.ndarray) -> np.ndarray:
    """Even ids: a flat loss of 1 (rank 0's view: a plateau at once). Odd ids: 10 * 0.5**e
    (rank 1's view: never a plateau). The global mean plateaus only at epoch 4."""
    ids = np.asarray(ids)
    row = np.where(ids % 2 == 0, 1.0, 10.0 * 0.5**epoch)
    return np.stack([row, row * 1.01])


def test_warmup_is_decided_on_the_global_mean_loss():
    # no shuffle and N = 403 odd: rank 0 trains on the even ids, rank 1 on the odd ids plus
    # DistributedSampler's wrap-around pad (id 0)
    padded = np.concatenate([np.arange(N), np.arange(N)])[: 2 * ((N + 1) // 2)]
    shards = [padded[0::2], padded[1::2]]

    def mean(e, ids):
        return float(split_loss(e, ids).mean())

    global_means = [mean(e, padded) for e in range(E)]
    expected = plateau_e0(global_means, CFG.warmup_threshold)
    local = [plateau_e0([mean(e, s) for e in range(E)], CFG.warmup_threshold) for s in shards]
    # the stream is built so that each rank alone would decide differently
    assert expected is not None and len({expected, *local}) == 3, (expected, local)
    results = run_ranks(2, rank_run(epochs=expected + 2, loss_fn=split_loss, shuffle=False))
    for rank, res in enumerate(results):
        np.testing.assert_array_equal(np.concatenate(res[0]["batches"]), shards[rank])
        assert res[-1]["e0"] == expected
        phases = [r["phase"] for r in res]
        assert phases[:expected] == ["warmup"] * expected and phases[expected] == "prepare"


def test_different_local_data_cannot_make_states_diverge():
    """Every quantity the state is built from is reduced across ranks (mean loss by sum, D' by
    bitwise or), so ranks that see different data still end each epoch with one state: there
    is nothing for ScanDistributedError to catch there. A rank that resumed from another
    epoch, or runs another config, is what can diverge (the tests below)."""
    def skewed(epoch, ids):
        return STREAM(epoch, ids) * (1.0 + 0.5 * (np.asarray(ids) % 3 == 0))

    results = run_ranks(3, rank_run(loss_fn=skewed))
    for res in results[1:]:
        assert [r["fingerprint"] for r in res] == [r["fingerprint"] for r in results[0]]


def _states_after_each_epoch(cfg, epochs):
    def body(comm):
        pruner = ScanPruner(N, 2, cfg, communicator=comm)
        states = [pruner.state_dict()]
        for e in range(epochs):
            run_epoch(pruner, e, STREAM, B, rank=comm.rank, world_size=2)
            states.append(pruner.state_dict())
        return states
    return run_ranks(2, body)


@pytest.mark.parametrize("epochs", [(3, 4), (2, 3)], ids=["both-mutate", "prepare-vs-mutate"])
def test_a_rank_resumed_from_another_epoch_is_caught(epochs):
    cfg = CFG.replace(warmup_epochs=2)  # e0 = 2: epoch 2 prepares, epochs 3..5 mutate
    states = _states_after_each_epoch(cfg, max(epochs))

    def resumed(comm):
        pruner = ScanPruner.from_state_dict(states[comm.rank][epochs[comm.rank]],
                                            communicator=comm)
        assert pruner.next_epoch == epochs[comm.rank]
        run_epoch(pruner, pruner.next_epoch, STREAM, B, rank=comm.rank, world_size=2)

    with pytest.raises(ScanDistributedError):
        run_ranks(2, resumed)


def test_a_rank_with_another_seed_is_caught():
    """Ranks with different seeds draw different mutation subsets: different plans, different
    shard lengths, a hang in a real DDP job. ScanDistributedError promises to catch ranks that
    disagree on the plan."""
    def body(comm):
        pruner = ScanPruner(N, 2, CFG.replace(seed=CFG.seed + comm.rank), communicator=comm)
        return [r.fingerprint for r in run(pruner, E, STREAM, B, rank=comm.rank, world_size=2)]

    with pytest.raises(ScanDistributedError):
        fps = run_ranks(2, body)
        # reached only when nothing was raised: show what the ranks planned
        diverged = [e for e, (a, b) in enumerate(zip(*fps)) if a != b]
        pytest.fail(f"no ScanDistributedError, yet the ranks' plans differ at epochs {diverged}")


@pytest.mark.parametrize("world_size", [2, 3])
def test_store_with_ranks_resumes_identically_on_every_rank(tmp_path, world_size):
    path = tmp_path / "run.zarr"
    uninterrupted = run_ranks(world_size, rank_run())
    stop = 6
    run_ranks(world_size, rank_run(store=path, epochs=stop))
    resumed = run_ranks(world_size, rank_run(store=path, start=stop))
    for rank, res in enumerate(resumed):
        assert [r["fingerprint"] for r in res] == [
            r["fingerprint"] for r in uninterrupted[rank][stop:]]
        np.testing.assert_array_equal(res[-1]["red"], uninterrupted[rank][-1]["red"])
        assert res[-1]["log"] == uninterrupted[rank][-1]["log"]


def _each_rank_catches(group: ThreadGroup, fn) -> list[BaseException | None]:
    """Run fn(comm) on every rank of `group`, each rank keeping its own exception (nothing
    aborts the group for it: a rank left waiting in a collective shows as a barrier timeout)."""
    errors: list[BaseException | None] = [None] * group.world_size

    def body(rank: int) -> None:
        try:
            fn(group.communicator(rank))
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            errors[rank] = exc

    threads = [threading.Thread(target=body, args=(r,)) for r in range(group.world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_a_store_refused_on_rank_0_stops_every_rank_instead_of_hanging(tmp_path):
    """Rank 0 validates the store first. When it refuses it (here: written with another
    config), the other ranks must raise too, not wait forever at the next collective."""
    path = tmp_path / "run.zarr"
    run_ranks(2, rank_run(store=path, epochs=2))
    other = ScanConfig(seed=99)
    errors = _each_rank_catches(
        ThreadGroup(2, timeout_s=10.0),
        lambda comm: ScanPruner(N, 2, other, store=path, communicator=comm))
    assert isinstance(errors[0], ScanStoreMismatchError)
    assert isinstance(errors[1], ScanDistributedError) and "[0]" in str(errors[1])


def test_all_or_none_raises_on_every_rank_or_on_none():
    def step_failing_on(bad: set[int]):
        def fn(comm):
            def step():
                if comm.rank in bad:
                    raise ValueError(f"rank {comm.rank} broke")
            all_or_none(comm, step, "testing")
        return fn

    assert _each_rank_catches(ThreadGroup(3, timeout_s=10.0), step_failing_on(set())) == [None] * 3
    errors = _each_rank_catches(ThreadGroup(3, timeout_s=10.0), step_failing_on({1, 2}))
    assert isinstance(errors[0], ScanDistributedError) and "[1, 2]" in str(errors[0])
    assert [str(e) for e in errors[1:]] == ["rank 1 broke", "rank 2 broke"]


def test_ranks_with_different_coverage_policies_are_caught_at_construction():
    """coverage="off" skips the seen-bitmap reduction that "warn" / "error" run at end_epoch:
    ranks that differ would wait on each other's collective (a hang in a real DDP job, a
    BrokenBarrierError after the group's timeout here). The construction check catches it."""
    def body(comm):
        pruner = ScanPruner(N, 2, CFG, communicator=comm,
                            coverage="off" if comm.rank else "warn")
        run(pruner, 2, STREAM, B, rank=comm.rank, world_size=2)

    with pytest.raises(ScanDistributedError, match="coverage"):
        run_ranks(2, body)
