"""Worker of the two-process JAX tests (test_distributed.py starts two of these):

    JAX_PLATFORMS=cpu python -m tests.adapters.jax._multiprocess ID NUM_PROCESSES PORT OUT TASKS

Each process joins `jax.distributed` on 127.0.0.1:PORT with one CPU device and gloo CPU
collectives, runs TASKS[name](rank, world) for each name of the comma-separated TASKS and
pickles {name: returned dict} to OUT/rank{id}.pkl.
A failure writes its traceback to OUT/rank{id}.err. Inputs are pure functions of (epoch, ids),
so the test process can replay every rank's batches with scan_core's thread-simulated ranks.
"""

from __future__ import annotations

import pathlib
import pickle
import sys
import traceback
from typing import Any

import numpy as np

N, BATCH, EPOCHS, DIM = 256, 16, 6, 8


def features(ids: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit (B, DIM) image and text features, a deterministic function of (id, epoch)."""
    phase = ids[:, None] * 0.37 + np.arange(DIM)[None, :] * 1.3
    image = np.sin(phase) + 0.05 * epoch
    text = np.cos(phase * 0.9 + (ids[:, None] % 7))
    image, text = (f / np.linalg.norm(f, axis=1, keepdims=True) for f in (image, text))
    return image.astype(np.float32), text.astype(np.float32)


def config():
    from scan_core import ScanConfig

    return ScanConfig(seed=5, warmup_epochs=1, t_cos=2)


def all_reduce(rank: int, world: int) -> dict[str, Any]:
    from adapters.jax import JaxCommunicator
    from scan_core.errors import ScanDistributedError

    comm = JaxCommunicator(chunk_bytes=40)  # several chunks even for small arrays
    out: dict[str, Any] = {"rank": comm.rank, "world_size": comm.world_size}
    floats = np.array([0.1 * (rank + 1), 1e300 / (rank + 1), -3.5], dtype=np.float64)
    digests = np.array([2**62 + rank, -(2**62) - rank], dtype=np.int64)
    bits = np.arange(100, dtype=np.uint8) * (rank + 3)
    before = bits.copy()
    out["sum"] = comm.all_reduce(floats, "sum")
    out["max"] = comm.all_reduce(digests, "max")
    out["bor"] = comm.all_reduce(bits, "bor")
    out["untouched"] = bool((bits == before).all())
    out["matrix"] = comm.all_reduce(np.full((3, 5), rank, np.int32), "sum")
    try:
        comm.all_reduce(np.zeros(3 + rank, np.float64), "sum")
        out["mismatch"] = None
    except ScanDistributedError as exc:
        out["mismatch"] = str(exc)
    return out


def pruner_run(rank: int, world: int) -> dict[str, Any]:
    """A CLIP-like SCAN run over a global mesh of both processes' devices (GSPMD): each process
    places its own batch, the jitted loss sees the global batch, each records its own rows."""
    import jax

    from adapters.jax import (AsyncRecorder, JaxCommunicator, clip_loss, data_mesh,
                              plan_batches, shard_batch)
    from scan_core import ScanPruner

    mesh = data_mesh()
    step = jax.jit(lambda i, t: clip_loss(i, t, 10.0).per_sample)
    pruner = ScanPruner(N, 2, config(), communicator=JaxCommunicator())
    # Recording is local to a process (only end_epoch is collective), so the two processes
    # may use either recorder mode: rank 0 never waits, rank 1 records one step late.
    recorder = AsyncRecorder(pruner, max_pending=None if rank == 0 else 1)
    fingerprints, candidates, batches = [], [], []
    for epoch in range(EPOCHS):
        plan = pruner.plan_epoch(epoch)
        fingerprints.append(plan.fingerprint)
        for ids in plan_batches(plan, BATCH, rank=rank, world_size=world, drop_last=True):
            batches.append((epoch, ids))
            recorder.push(ids, step(*shard_batch(mesh, *features(ids, epoch))))
        recorder.end_epoch()
        candidates.append(pruner.candidate_ids())
    return {"fingerprints": fingerprints, "candidates": candidates, "log": pruner.log,
            "batches": batches, "devices": jax.device_count()}


def conformance(rank: int, world: int) -> dict[str, Any]:
    """tests/adapters/conformance.py's two-rank body with the default JaxAdapter."""
    from adapters.jax import JaxAdapter
    from tests.adapters.conformance import two_rank_body

    return two_rank_body(JaxAdapter())


TASKS = {"all_reduce": all_reduce, "pruner": pruner_run, "conformance": conformance}


def main(process_id: int, num_processes: int, port: int, out_dir: str, task: str) -> None:
    out = pathlib.Path(out_dir)
    try:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=num_processes, process_id=process_id,
                                   initialization_timeout=60)
        result = {name: TASKS[name](jax.process_index(), jax.process_count())
                  for name in task.split(",")}
        (out / f"rank{process_id}.pkl").write_bytes(pickle.dumps(result))
        jax.distributed.shutdown()
    except BaseException:
        (out / f"rank{process_id}.err").write_text(traceback.format_exc())
        raise


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
