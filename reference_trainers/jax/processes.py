"""Several JAX processes (`jax.distributed`): the JAX trainers' counterpart of torchrun.

    python -m reference_trainers.clip --framework jax ... --coordinator 10.0.0.1:1234 \\
        --num-processes 2 --process-id 0          # and --process-id 1 on the other host
    python -m reference_trainers.clip --framework jax ... --coordinator auto   # SLURM, TPU, MPI

`--coordinator HOST:PORT` with `--num-processes` / `--process-id` calls
`jax.distributed.initialize(HOST:PORT, N, I)`; `--coordinator auto` calls it without arguments,
so JAX detects the cluster (SLURM, Open MPI, TPU pods, ...) or reads JAX_COORDINATOR_ADDRESS.
Without the flag the run is one process over its local devices, as before.

Every process then runs the same trainer: the same data, model and pruner (JaxCommunicator),
its own shard of each epoch's plan (`plan_batches(rank=, world_size=)`), its rows of the global
batch assembled over a mesh of every process's devices; process 0 writes the run directory and
evaluates. What can fail on one process only (a run directory that refuses the config, a
checkpoint that does not load) is checked on every process and agreed on before the first
collective (`agreed`), so every process stops with the error instead of some of them waiting in
a collective for a process that has gone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

from reference_trainers.common.errors import TrainerError

__all__ = ["add_process_flags", "agreed", "barrier", "check_process_count", "host_local",
           "init_processes", "start_processes", "stop_processes"]

T = TypeVar("T")


def add_process_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The JAX trainers' launch flags (not config fields: a run's config does not change with
    how it is launched; the store records the process count and a resume checks it)."""
    group = parser.add_argument_group("several processes (jax.distributed)")
    group.add_argument("--coordinator", default=None,
                       help="HOST:PORT of process 0's coordinator, or 'auto' (cluster "
                            "auto-detection: SLURM, Open MPI, TPU; JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=int, default=None,
                       help="processes in the run (with --coordinator HOST:PORT)")
    group.add_argument("--process-id", type=int, default=None,
                       help="this process, 0 .. num-processes - 1 (with --coordinator)")
    return parser


def init_processes(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` as the flags say (nothing without --coordinator); call it
    before anything starts JAX's backend. Sets RANK to the process index, the variable the
    trainers' common closing line reads (torchrun's convention)."""
    coordinator = getattr(args, "coordinator", None)
    if coordinator is None:
        if args.num_processes is not None or args.process_id is not None:
            raise TrainerError("--num-processes / --process-id need --coordinator HOST:PORT "
                               "(or --coordinator auto)")
        return
    if coordinator == "auto":
        if args.num_processes is not None or args.process_id is not None:
            raise TrainerError("--coordinator auto takes the process count and id from the "
                               "cluster; drop --num-processes / --process-id")
        kwargs: dict[str, Any] = {}
    else:
        world, rank = args.num_processes, args.process_id
        if world is None or rank is None or world < 1 or not 0 <= rank < world:
            raise TrainerError(f"--coordinator {coordinator} needs --num-processes N >= 1 and "
                               f"--process-id in [0, N); got {world} and {rank}")
        kwargs = {"coordinator_address": coordinator, "num_processes": world, "process_id": rank}
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        # CPU processes talk through gloo (the default from JAX 0.10; older ones need it set).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    os.environ["RANK"] = str(jax.process_index())


def start_processes(args: argparse.Namespace) -> int | None:
    """A trainer main's `init_processes`: None when it may go on, else the exit code (2, with
    the error on stderr, as common/loop.cli_main reports the trainers' errors)."""
    try:
        init_processes(args)
    except TrainerError as exc:
        print(f"error: TrainerError: {exc}", file=sys.stderr)
        return 2
    return None


def stop_processes() -> None:
    """Leave `jax.distributed` (every process, at the end of a run that started it)."""
    if jax.process_count() > 1:
        jax.distributed.shutdown()


def agreed(what: str, fn: Callable[[], T]) -> T:
    """fn() on every process; if it raised on any, raise on every process (the failing one
    re-raises its own error, the others a TrainerError naming it). One process: just fn()."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    error: BaseException | None = None
    result: Any = None
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the others know
        error = exc
    failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
    if error is not None:
        raise error
    if failed.any():
        raise TrainerError(f"{what} failed on process(es) "
                           f"{np.flatnonzero(failed).tolist()}; see their error")
    return result


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def check_process_count(store: Any, resume: bool) -> None:
    """On --resume, refuse a process count other than the one the run's SCAN store was
    written with (per-batch candidates depend on each process's batches: scan_core refuses
    too, but on process 0 only; here every process stops with the same message)."""
    if not resume or not os.path.exists(os.path.join(store, "zarr.json")):
        return
    from scan_core import LossStore

    stored = LossStore.read_meta(store).get("world_size")
    if stored is not None and stored != jax.process_count():
        raise TrainerError(
            f"{store} was written by {stored} process(es), this resume runs "
            f"{jax.process_count()}: SCAN's per-batch candidates depend on each process's "
            f"batches, so the run cannot continue identically. Resume with --num-processes "
            f"{stored}, or start a new run in another --out.")


def host_local(tree: Any) -> Any:
    """`tree` with every array spread over several processes replaced by this process's copy
    (replicated arrays only: the state, its evaluation and checkpoints), so process 0 can
    evaluate and save without the other processes joining in."""
    def local(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise TrainerError(f"host_local: a {x.shape} array is sharded over processes "
                                   f"({x.sharding}); only replicated arrays have a local copy")
            return x.addressable_data(0)
        return x

    return jax.tree.map(local, tree)
