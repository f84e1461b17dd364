"""What every PyTorch reference trainer's run does outside its model: start the processes,
save and load checkpoints. Shared by the CLIP and MoCo trainers. The framework-free part (the
epoch loop, the summary, `fmt`, the command-line wrapper) lives in common/loop.py and is
re-exported here under the same names.

A checkpoint holds the model, the optimiser, the augmentation generator and the wall-clock so
far, written after the pruner's store snapshot of the same epoch; `load_checkpoint` returns the
epoch to give `ScanPruner(resume_epoch=...)`, so a resumed run replays the same plans and draws.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from reference_trainers.common import loop
from reference_trainers.common.loop import epoch_loop, finish, fmt  # noqa: F401 (re-exported)
from reference_trainers.common.rundir import RunDir

__all__ = ["cli_main", "epoch_loop", "finish", "fmt", "init_distributed", "load_checkpoint",
           "open_run", "save_checkpoint"]


def init_distributed() -> tuple[int, int]:
    """torchrun sets WORLD_SIZE / RANK; gloo on CPU, NCCL when CUDA is there."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def open_run(cfg: Any, out: str, *, resume: bool) -> tuple[int, int, RunDir]:
    """A PyTorch run's first steps: join the processes, set the CPU threads (cfg.threads),
    open the run directory and write (rank 0; on resume, check) its config. -> (rank, world,
    run directory)."""
    rank, world = init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = RunDir(out)
    if rank == 0:
        run_dir.write_config(cfg.to_dict(), resume=resume)
    return rank, world, run_dir


def save_checkpoint(run: RunDir, epoch: int, model, optimizer, generator, wall: float, *,
                    scaler=None) -> None:
    """Write the epoch's checkpoint (temp file, then renamed). `scaler`: the fp16 grad scaler,
    whose loss scale a resumed run must continue from."""
    tmp = run.checkpoint_path(epoch).with_suffix(".tmp")
    torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "wall_seconds": wall,
                "scaler": scaler.state_dict() if scaler is not None else None}, tmp)
    run.commit_checkpoint(tmp, epoch)


def load_checkpoint(run: RunDir, model, optimizer, generator, *,
                    scaler=None) -> tuple[int, float]:
    """(last completed epoch, wall seconds so far), or (-1, 0) when there is no checkpoint."""
    latest = run.latest_checkpoint()
    if latest is None:
        return -1, 0.0
    state = torch.load(latest[1], map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]), float(state["wall_seconds"])


def cli_main(make_config: Callable[[], Any], args: Any, run: Callable[..., dict[str, Any]],
             closing_line: Callable[[dict[str, Any]], str]) -> int:
    """common/loop.cli_main that leaves the torch.distributed process group at the end."""
    return loop.cli_main(make_config, args, run, closing_line, shutdown=_leave_process_group)


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
