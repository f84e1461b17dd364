"""Two real JAX processes (jax.distributed on 127.0.0.1, one CPU device each, gloo CPU
collectives), started as subprocesses running tests/adapters/jax/_multiprocess.py.

Invariants held here:
- JaxCommunicator's all_reduce equals numpy's reduction of every process's input, bit-exact for
  float64 and int64 (which a 32-bit JAX could not carry as device arrays), chunked or not,
  leaves the input untouched, and refuses processes that pass different shapes.
- Two processes running ScanPruner with JaxCommunicator over a global mesh (GSPMD: each
  process places its own batch, the loss sees the global batch, each records its own rows with
  AsyncRecorder, one with max_pending=None, the other with the default) plan identical epochs
  and hold identical candidates, and equal scan_core's
  thread-simulated ranks fed the same batches and losses.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from adapters.jax import JaxCommunicator, clip_loss  # noqa: E402
from scan_core import ScanPruner, SingleProcess, run_ranks  # noqa: E402
from tests.adapters.jax import _multiprocess  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[3]
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(tasks: str, out: pathlib.Path, world: int = 2) -> list[dict]:
    """Run the comma-separated _multiprocess.TASKS in `world` JAX processes; per rank, in rank
    order, {task: its result}."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": "", "OMP_NUM_THREADS": "1"}
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.adapters.jax._multiprocess", str(i),
                               str(world), str(port), str(out), tasks], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errors = [f.read_text() for f in sorted(out.glob("*.err"))]
    assert all(p.returncode == 0 for p in procs) and not errors, \
        "\n".join(errors + [log[-3000:] for log in logs])
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(world)]


def test_single_process_behaves_like_scan_cores_single_process():
    comm, reference = JaxCommunicator(), SingleProcess()
    assert (comm.rank, comm.world_size) == (reference.rank, reference.world_size) == (0, 1)
    for array, op in [(np.array([1.5, -2.0]), "sum"), (np.arange(6, dtype=np.int64), "max"),
                      (np.arange(9, dtype=np.uint8).reshape(3, 3), "bor")]:
        got = comm.all_reduce(array, op)
        np.testing.assert_array_equal(got, reference.all_reduce(array, op))
        assert got.dtype == array.dtype and got is not array and not np.shares_memory(got, array)
    with pytest.raises(ValueError, match="op must be 'sum', 'max' or 'bor'"):
        comm.all_reduce(np.zeros(2), "min")


def test_bad_chunk_size_is_refused():
    with pytest.raises(ValueError, match="chunk_bytes must be an int >= 1"):
        JaxCommunicator(chunk_bytes=0)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One pair of JAX processes runs every task (each start costs seconds of CPU)."""
    return spawn("all_reduce,pruner", tmp_path_factory.mktemp("two_processes"))


@pytest.mark.distributed
def test_two_processes_all_reduce_exactly(two_processes):
    results = [r["all_reduce"] for r in two_processes]
    floats = [np.array([0.1 * (r + 1), 1e300 / (r + 1), -3.5]) for r in range(2)]
    digests = [np.array([2**62 + r, -(2**62) - r], dtype=np.int64) for r in range(2)]
    bits = [np.arange(100, dtype=np.uint8) * (r + 3) for r in range(2)]
    for rank, got in enumerate(results):
        assert (got["rank"], got["world_size"]) == (rank, 2)
        np.testing.assert_array_equal(got["sum"], floats[0] + floats[1])
        np.testing.assert_array_equal(got["max"], np.maximum(*digests))
        assert got["max"].dtype == np.int64
        np.testing.assert_array_equal(got["bor"], bits[0] | bits[1])
        np.testing.assert_array_equal(got["matrix"], np.ones((3, 5), np.int32))
        assert got["untouched"]
        assert "processes called all_reduce with different arrays" in got["mismatch"]


def _replay(results: list[dict]) -> list[dict]:
    """scan_core's thread-simulated ranks fed what each JAX process recorded: its own rows of
    the CLIP loss over the global batch (both processes' batches concatenated in rank order)."""
    world = len(results)
    step = jax.jit(lambda i, t: clip_loss(i, t, 10.0).per_sample)
    rows: list[list] = [[] for _ in range(world)]
    for steps in zip(*(r["batches"] for r in results)):
        epochs = {epoch for epoch, _ in steps}
        assert len(epochs) == 1, "the processes ran different numbers of steps"
        epoch = epochs.pop()
        ids = np.concatenate([i for _, i in steps])
        per_sample = np.asarray(step(*_multiprocess.features(ids, epoch)))
        for rank, (_, own) in enumerate(steps):
            start = rank * len(own)
            rows[rank].append((epoch, own, per_sample[:, start:start + len(own)]))

    def rank_body(comm):
        pruner = ScanPruner(_multiprocess.N, 2, _multiprocess.config(), communicator=comm)
        fingerprints, candidates = [], []
        for epoch in range(_multiprocess.EPOCHS):
            fingerprints.append(pruner.plan_epoch(epoch).fingerprint)
            for e, ids, losses in rows[comm.rank]:
                if e == epoch:
                    pruner.record(ids, losses)
            pruner.end_epoch()
            candidates.append(pruner.candidate_ids())
        return {"fingerprints": fingerprints, "candidates": candidates, "log": pruner.log}

    return run_ranks(world, rank_body)


@pytest.mark.distributed
def test_two_processes_build_identical_plans_equal_to_simulated_ranks(two_processes):
    results = [r["pruner"] for r in two_processes]
    assert all(r["devices"] == 2 for r in results)
    first = results[0]
    for other in results[1:]:
        assert other["fingerprints"] == first["fingerprints"]
        for a, b in zip(other["candidates"], first["candidates"]):
            np.testing.assert_array_equal(a, b)
    phases = [row["phase"] for row in first["log"]]
    assert "prepare" in phases and "mutate" in phases, phases
    assert any(row["num_kept"] < _multiprocess.N for row in first["log"])
    # The two processes' batches of an epoch are disjoint: each served its own shard.
    for (e0, a), (e1, b) in zip(results[0]["batches"], results[1]["batches"]):
        assert e0 == e1 and not set(a.tolist()) & set(b.tolist())
    simulated = _replay(results)
    for rank, (jax_rank, sim) in enumerate(zip(results, simulated)):
        assert jax_rank["fingerprints"] == sim["fingerprints"], f"rank {rank}"
        for a, b in zip(jax_rank["candidates"], sim["candidates"]):
            np.testing.assert_array_equal(a, b)
        assert [r["mean_loss"] for r in jax_rank["log"]] == pytest.approx(
            [r["mean_loss"] for r in sim["log"]], rel=1e-6)
