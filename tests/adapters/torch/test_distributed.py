"""Real multi-process runs of the torch adapter and the pruner: torch.multiprocessing.spawn,
gloo on 127.0.0.1, two ranks (three where cheap). Workers (tests/adapters/torch/_workers.py)
pickle their results into a temporary directory; the test process compares them with each
other and with a single-process reference it computes itself.

Invariants held here (SPEC.md, issue 3):
- TorchCommunicator's all_reduce equals numpy's reduction of every rank's input, and leaves the
  input untouched.
- Every rank plans the identical epoch (fingerprint) and holds the identical D' at every epoch;
  the ranks together serve the kept set, no sample twice beyond DistributedSampler's padding;
  the pruned run equals scan_core's thread-simulated ranks fed the same batches.
- Warm-up is decided on the global mean loss, not on rank 0's.
- clip_loss / moco_loss under gathering give each rank the rows of the single-process loss over
  the global batch, and the gradients DDP needs.
- A run stopped at an epoch boundary and rebuilt over its Zarr store plans what an
  uninterrupted run plans.
"""

from __future__ import annotations

import pickle
import socket
import time
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from adapters.torch import clip_loss, moco_loss
from scan_core import ScanConfig, ScanPruner, run_ranks
from tests.adapters.torch import _workers
from tests.core.streams import LossStream, plateau_e0

pytestmark = pytest.mark.distributed

TIMEOUT_S = 120.0


# -- harness -------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(task: str, world_size: int, tmp_path, **kwargs: Any) -> list[dict[str, Any]]:
    """Run `_workers.TASKS[task]` on `world_size` gloo ranks; return their results in rank
    order. Fails the test (with the workers' tracebacks) if a worker dies or the run takes
    longer than TIMEOUT_S."""
    out = tmp_path / f"{task}-{time.monotonic_ns()}"
    out.mkdir()
    context = mp.start_processes(
        _workers.main, args=(world_size, _free_port(), str(out), task, kwargs),
        nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{task}: {world_size} workers did not finish in {TIMEOUT_S:.0f} s"
                            + _tracebacks(out))
    except ProcessException as exc:  # join() has already terminated the other workers
        pytest.fail(f"{task}: a worker failed: {exc}" + _tracebacks(out))
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    results = []
    for rank in range(world_size):
        path = out / f"rank{rank}.pkl"
        if not path.exists():
            pytest.fail(f"{task}: rank {rank} exited without writing results" + _tracebacks(out))
        with open(path, "rb") as f:
            results.append(pickle.load(f))
    return results


def _tracebacks(out) -> str:
    return "".join(f"\n--- {p.name} ---\n{p.read_text()}" for p in sorted(out.glob("*.err")))


# -- TorchCommunicator ---------------------------------------------------------------------------

@pytest.mark.parametrize("world_size", [2, 3])
def test_all_reduce_equals_numpy_reduction_of_every_rank(tmp_path, world_size):
    results = spawn("comm", world_size, tmp_path)
    reduce = {"sum": lambda xs: np.sum(xs, axis=0, dtype=xs[0].dtype),
              "max": lambda xs: np.max(xs, axis=0),
              "bor": lambda xs: np.bitwise_or.reduce(xs, axis=0)}
    for rank, got in enumerate(results):
        assert (got["rank"], got["world_size"]) == (rank, world_size)
        for dtype, op in _workers.REDUCE_CASES:
            inputs = np.stack([_workers.comm_input(dtype, r) for r in range(world_size)])
            expected = reduce[op](inputs)
            result = got[(dtype, op)]
            assert isinstance(result, np.ndarray)
            assert result.dtype == np.dtype(dtype) and result.shape == expected.shape, (dtype, op)
            if dtype == "float64" and op == "sum":  # summation order may differ from numpy's
                np.testing.assert_allclose(result, expected, rtol=1e-13, err_msg=str((dtype, op)))
            else:
                np.testing.assert_array_equal(result, expected, err_msg=str((dtype, op)))
            assert got[(dtype, op, "input_unchanged")], f"all_reduce({dtype}, {op}) wrote its input"
        strided = sum(_workers.comm_input("float64", r, (6, 8))[:, ::2] for r in range(world_size))
        np.testing.assert_allclose(got["strided"], strided, rtol=1e-13)
        bits = [np.packbits(np.random.default_rng([r, 3]).random(1001) < 0.2, bitorder="little")
                for r in range(world_size)]
        np.testing.assert_array_equal(got["bitmap"], np.bitwise_or.reduce(bits))


# -- ScanSampler + ScanPruner on real ranks -----------------------------------------------------

N, BATCH, EPOCHS = 3001, 64, 9  # N odd: two ranks pad; LossStream ends warm-up at e0 = 3
SEED = 4


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """An uninterrupted 2-rank run of 9 epochs (warm-up 0-2, prepare 3, mutate 4-6,
    prepare 7, mutate 8), shared by the sampler and the resume tests."""
    return spawn("scan", 2, tmp_path_factory.mktemp("scan"), num_samples=N, batch_size=BATCH,
                 epochs=EPOCHS, seed=SEED)


def thread_reference(world_size: int, num_samples: int, batch_size: int, epochs: int,
                     seed: int, drop_last: bool) -> list[dict[str, Any]]:
    """The same run over scan_core's ThreadGroup: each simulated rank shards the plan with the
    sampler's permutation (torch.randperm seeded seed + epoch) and records the same batches."""
    stream = LossStream(seed=seed)

    def permutation(epoch: int):
        def perm(n: int) -> np.ndarray:
            return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).numpy()
        return perm

    def body(comm):
        pruner = ScanPruner(num_samples, 2, ScanConfig.clip(seed=seed), communicator=comm)
        rows = []
        for epoch in range(epochs):
            plan = pruner.plan_epoch(epoch)
            ids = plan.shard(comm.rank, comm.world_size, drop_last=drop_last,
                             permutation=permutation(epoch))
            for start in range(0, len(ids), batch_size):
                batch = ids[start:start + batch_size]
                pruner.record(batch, _workers.stream_losses(stream, epoch, batch))
            pruner.end_epoch()
            rows.append({"fingerprint": plan.fingerprint, "served": ids,
                         "candidates": pruner.candidate_ids()})
        return rows

    return run_ranks(world_size, body)


def check_epochs_agree(results: list[dict[str, Any]], num_samples: int, drop_last: bool) -> None:
    world_size = len(results)
    epochs = [r["epochs"] for r in results]
    assert len({len(e) for e in epochs}) == 1
    for per_rank in zip(*epochs):
        first = per_rank[0]
        epoch = first["epoch"]
        for other in per_rank[1:]:
            assert other["fingerprint"] == first["fingerprint"], f"epoch {epoch}: plans differ"
            np.testing.assert_array_equal(other["candidates"], first["candidates"],
                                          err_msg=f"epoch {epoch}: D' differs")
            np.testing.assert_array_equal(other["kept_ids"], first["kept_ids"])
            assert other["len_sampler"] == first["len_sampler"], f"epoch {epoch}: len differs"
            assert other["num_batches"] == first["num_batches"]
        kept = first["kept_ids"]
        assert len(kept) == first["num_kept"]
        per_rank_len = first["len_sampler"]
        total = per_rank_len * world_size
        served = [r["served"] for r in per_rank]
        assert all(len(s) == per_rank_len for s in served), f"epoch {epoch}: served != len()"
        everything = np.concatenate(served)
        assert np.isin(everything, kept).all(), f"epoch {epoch}: a pruned sample was served"
        unique = np.unique(everything)
        if drop_last:
            assert total == len(kept) - len(kept) % world_size
            assert len(unique) == total, f"epoch {epoch}: a sample served twice"
        else:
            np.testing.assert_array_equal(unique, kept, err_msg=f"epoch {epoch}: kept != served")
            assert total - len(unique) == total - first["num_kept"]  # duplicates == padding
            assert total - first["num_kept"] < world_size
        # Each rank recorded exactly what it was served: the pruner counted every rank's rows.
        assert first["summary"]["num_recorded"] == total
        assert first["summary"]["num_kept"] == first["num_kept"]


def test_two_ranks_plan_identically_and_serve_the_kept_set(two_rank_run):
    check_epochs_agree(two_rank_run, N, drop_last=False)
    rows = two_rank_run[0]["epochs"]
    assert [r["phase"] for r in rows] == ["warmup"] * 3 + ["prepare"] + ["mutate"] * 3 + \
        ["prepare", "mutate"]
    assert all(r["num_kept"] == N for r in rows[:4])
    assert all(r["num_kept"] < N for r in rows[4:7] + rows[8:]), "nothing was pruned"
    assert len(rows[3]["candidates"]) > N // 3  # D' of about 2 * rho * N
    # DataLoader batches follow the sampler: len(loader) batches of BATCH, the last one short.
    assert all(r["len_loader"] == r["num_batches"] == -(-r["len_sampler"] // BATCH) for r in rows)


def test_two_ranks_equal_the_thread_simulated_ranks(two_rank_run):
    reference = thread_reference(2, N, BATCH, EPOCHS, SEED, drop_last=False)
    for rank in range(2):
        for got, want in zip(two_rank_run[rank]["epochs"], reference[rank], strict=True):
            assert got["fingerprint"] == want["fingerprint"], got["epoch"]
            np.testing.assert_array_equal(got["served"], want["served"])
            np.testing.assert_array_equal(got["candidates"], want["candidates"])


def test_three_ranks_with_drop_last(tmp_path):
    n, epochs = 2000, 6  # 2000 % 3 != 0: drop_last truncates warm-up epochs too
    results = spawn("scan", 3, tmp_path, num_samples=n, batch_size=48, epochs=epochs,
                    drop_last=True, seed=9)
    check_epochs_agree(results, n, drop_last=True)
    assert any(r["num_kept"] < n for r in results[0]["epochs"]), "nothing was pruned"
    reference = thread_reference(3, n, 48, epochs, 9, drop_last=True)
    for rank in range(3):
        assert [r["fingerprint"] for r in results[rank]["epochs"]] == \
            [r["fingerprint"] for r in reference[rank]]


# -- warm-up on the global mean ------------------------------------------------------------------

def test_warmup_ends_on_the_global_mean_loss_not_rank_zeros(tmp_path):
    epochs = len(_workers.WARMUP_LEVELS[0])
    results = spawn("warmup", 2, tmp_path, num_samples=2000, batch_size=50, epochs=epochs)
    sums = np.array([r["local_sum"] for r in results])
    counts = np.array([r["local_count"] for r in results])
    global_mean = sums.sum(0) / counts.sum(0)
    expected_e0 = plateau_e0(list(global_mean), ScanConfig().warmup_threshold)
    rank0_e0 = plateau_e0(list(sums[0] / counts[0]), ScanConfig().warmup_threshold)
    assert (expected_e0, rank0_e0) == (5, 3), "the construction no longer separates the curves"
    for result in results:
        assert result["warmup_ended_at"] == expected_e0
        np.testing.assert_allclose([s["mean_loss"] for s in result["summaries"]], global_mean,
                                   rtol=1e-6)
        assert result["phases"] == ["warmup"] * 5 + ["prepare", "mutate"]


# -- losses under gather ---------------------------------------------------------------------------

def _single_clip(batch: int, world_size: int, dim: int):
    images, texts, weights = _workers.clip_inputs(world_size, batch, dim)
    images.requires_grad_(True)
    texts.requires_grad_(True)
    scale = torch.tensor(_workers.CLIP_SCALE, dtype=torch.float64, requires_grad=True)
    result = clip_loss(images, texts, scale)
    return images, texts, scale, weights, result


@pytest.mark.parametrize("local_loss,with_grad", _workers.CLIP_MODES)
def test_clip_loss_under_gather_matches_the_single_process_loss(clip_run, local_loss, with_grad):
    world_size, batch, dim = 2, 6, 5
    images, texts, scale, weights, single = _single_clip(batch, world_size, dim)
    per_sample = single.per_sample.detach().numpy()
    grad_images, grad_texts, grad_scale = torch.autograd.grad(
        single.loss, (images, texts, scale), retain_graph=True)
    weighted = clip_loss(images.detach(), texts.detach(), _workers.CLIP_SCALE, weights=weights)
    ranks = [r[(local_loss, with_grad)] for r in clip_run]
    for rank, got in enumerate(ranks):
        own = slice(rank * batch, (rank + 1) * batch)
        np.testing.assert_allclose(got["per_sample"], per_sample[:, own], rtol=1e-12)
        np.testing.assert_allclose(got["weighted_per_sample"], per_sample[:, own], rtol=1e-12)
        for name in ("grad_image", "grad_text", "grad_scale"):
            assert np.isfinite(got[name]).all(), name
        if not local_loss:  # every rank computes the whole global loss
            assert got["loss"] == pytest.approx(single.loss.item(), rel=1e-12)
            assert got["weighted_loss"] == pytest.approx(weighted.loss.item(), rel=1e-12)
            assert got["grad_scale"] == pytest.approx(grad_scale.item(), rel=1e-10)
    if local_loss:  # each rank's loss is its rows' mean; the global loss is their average
        assert np.mean([g["loss"] for g in ranks]) == pytest.approx(single.loss.item(), rel=1e-12)
        assert np.mean([g["weighted_loss"] for g in ranks]) == pytest.approx(
            weighted.loss.item(), rel=1e-12)
        assert np.mean([g["grad_scale"] for g in ranks]) == pytest.approx(grad_scale.item(),
                                                                         rel=1e-10)

    # Feature gradients. DDP averages parameter gradients over ranks, so a rank's feature
    # gradient must be world_size * dL/dx (L the single-process loss) for DDP to apply the true
    # gradient of L. With gather_with_grad the all_gather's backward sums every rank's
    # gradient into the owner's rows: world_size copies of dL/dx in global mode, and
    # sum_r dL_r/dx = world_size * dL/dx in local mode (L = mean_r L_r). Without it, only this
    # rank's own slice carries gradient: in global mode that is dL/dx itself (DDP then applies
    # 1 / world_size of the gradient: an LR scale), in local mode only dL_r/dx of its own rows.
    for rank, got in enumerate(ranks):
        own = slice(rank * batch, (rank + 1) * batch)
        if with_grad:
            want_i, want_t = world_size * grad_images[own], world_size * grad_texts[own]
        elif not local_loss:
            want_i, want_t = grad_images[own], grad_texts[own]
        else:
            own_loss = single.per_sample[:, own].mean()
            gi, gt = torch.autograd.grad(own_loss, (images, texts), retain_graph=True)
            want_i, want_t = gi[own], gt[own]
        np.testing.assert_allclose(got["grad_image"], want_i.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got["grad_text"], want_t.numpy(), rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    return spawn("clip", 2, tmp_path_factory.mktemp("clip"), batch=6, dim=5)


def test_moco_loss_with_gathered_keys_matches_the_single_process_loss(tmp_path):
    world_size, batch, dim = 2, 6, 5
    ranks = spawn("moco", world_size, tmp_path, batch=batch, dim=dim)
    q1, q2, k1, k2 = _workers.moco_inputs(world_size, batch, dim)
    q1.requires_grad_(True)
    q2.requires_grad_(True)
    single = moco_loss(q1, q2, k1, k2, _workers.MOCO_TEMPERATURE)
    grad_q1, grad_q2 = torch.autograd.grad(single.loss, (q1, q2))
    per_sample = single.per_sample.detach().numpy()
    for rank, got in enumerate(ranks):
        own = slice(rank * batch, (rank + 1) * batch)
        np.testing.assert_allclose(got["per_sample"], per_sample[:, own], rtol=1e-12)
        # Keys carry no gradient; a rank's loss is its rows' mean, so sum_r L_r = W * L and
        # the query gradient (queries appear in their own rows only) is W * dL/dq.
        assert not got["keys_have_grad"]
        np.testing.assert_allclose(got["grad_q1"], world_size * grad_q1[own].numpy(), rtol=1e-9)
        np.testing.assert_allclose(got["grad_q2"], world_size * grad_q2[own].numpy(), rtol=1e-9)
    assert np.mean([g["loss"] for g in ranks]) == pytest.approx(single.loss.item(), rel=1e-12)


def test_gather_with_grad_exits_cleanly(tmp_path):
    """A DDP job that used gather_with_grad must exit with status 0 (torchrun reports any
    other status as a failed job). With torch 2.13 on gloo, importing torch.distributed.nn for
    the first time after init_process_group, as gather_features does, makes about one exit in
    three abort (SIGABRT, "terminate called without an active exception") after all the work
    is done; importing it before the group exists avoids it. Five tries catch the abort with
    probability > 0.8 and never fail a correct adapter."""
    for attempt in range(5):
        results = spawn("gather_exit", 2, tmp_path)
        assert all(r["grad_finite"] for r in results), attempt


# -- resume over a Zarr store ------------------------------------------------------------------------

def test_resume_over_the_store_plans_like_an_uninterrupted_run(tmp_path, two_rank_run):
    store = str(tmp_path / "scan.zarr")
    kwargs = dict(num_samples=N, batch_size=BATCH, seed=SEED, store=store)
    first = spawn("scan", 2, tmp_path, epochs=4, **kwargs)    # warm-up 0-2, prepare 3: stop
    second = spawn("scan", 2, tmp_path, epochs=EPOCHS, **kwargs)  # fresh processes, same store
    for rank in range(2):
        assert first[rank]["start_epoch"] == 0 and second[rank]["start_epoch"] == 4
        resumed = first[rank]["epochs"] + second[rank]["epochs"]
        uninterrupted = two_rank_run[rank]["epochs"]
        assert [r["epoch"] for r in resumed] == list(range(EPOCHS))
        for got, want in zip(resumed, uninterrupted, strict=True):
            assert got["fingerprint"] == want["fingerprint"], f"epoch {got['epoch']}"
            np.testing.assert_array_equal(got["served"], want["served"])
            np.testing.assert_array_equal(got["candidates"], want["candidates"])
            assert got["summary"] == want["summary"]
    check_epochs_agree(second, N, drop_last=False)
