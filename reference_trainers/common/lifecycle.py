"""What every PyTorch reference trainer's run does outside its model: join and leave the
processes, open the run directory, save and load checkpoints. Shared by the CLIP and MoCo
trainers; the framework-free steps (the epochs, their rows, the summary, the command line's
ending) are in common/loop.py.

A checkpoint holds the model, the optimiser, every rank's augmentation generator and the
wall-clock so far, with a checksum file beside it, written after the pruner's store snapshot of the same epoch; `load_checkpoint` returns the
epoch to give `ScanPruner(resume_epoch=...)`, so a resumed run replays the same plans and draws.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import torch
import torch.distributed as dist

from reference_trainers.common.errors import CheckpointError
from reference_trainers.common.resume import resume_point
from reference_trainers.common.rundir import RunDir

__all__ = ["init_distributed", "leave_process_group", "load_checkpoint", "open_run",
           "save_checkpoint"]


def init_distributed() -> tuple[int, int]:
    """torchrun sets WORLD_SIZE / RANK; gloo on CPU, NCCL when CUDA is there."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _every_rank(state: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a uint8 state tensor (a generator's), gathered on every rank.
    Ranks draw different augmentations, so a resumed rank must continue from its own state,
    not rank 0's (issue 15, item 1: the loss drifted after a 2-rank resume)."""
    rank, world = _rank_and_world()
    if world == 1:
        return [state]
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    local = state.to(device)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    return [g.cpu() for g in gathered]


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
    """Write the epoch's checkpoint and its checksum file (rank 0, after gathering every
    rank's augmentation generator: a collective, so every rank calls this). `scaler`: the fp16
    grad scaler, whose loss scale a resumed run must continue from. The state is serialised in
    memory and written with Python's I/O, so a full disk is an OSError that RunDir names
    (torch.save to a file says only 'basic_ios::clear: iostream error')."""
    generators = _every_rank(generator.get_state())
    if _rank_and_world()[0] != 0:
        return
    buffer = io.BytesIO()
    torch.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generators[0], "generators": generators, "wall_seconds": wall,
                "scaler": scaler.state_dict() if scaler is not None else None}, buffer)
    run.write_checkpoint(epoch, buffer.getvalue(), "pt")


def load_checkpoint(run: RunDir, model, optimizer, generator, *,
                    scaler=None) -> tuple[int, float]:
    """(last completed epoch, wall seconds so far), or (-1, 0) when there is nothing to resume.
    The checkpoint is the newest that verifies and has a store snapshot of its epoch
    (common/resume.py); this rank's generator continues from its own saved state."""
    point = resume_point(run, "pt")
    if point.payload is None:
        return -1, 0.0
    try:
        state = torch.load(io.BytesIO(point.payload), map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as exc:  # torch raises many kinds on a bad file or another model
        raise CheckpointError(f"cannot load {point.path} ({type(exc).__name__}: {exc}); resume "
                              "with the run's own flags, or delete the file to fall back to "
                              "the one before.") from exc
    rank, world = _rank_and_world()
    saved = state.get("generators") or [state["generator"]]
    if len(saved) == world:
        generator.set_state(saved[rank])
    else:
        warnings.warn(f"{point.path} holds {len(saved)} rank generator state(s) for a run of "
                      f"{world} rank(s); every rank continues from rank 0's, so augmentations "
                      "differ from a run that never stopped.", stacklevel=2)
        generator.set_state(saved[0])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]), float(state["wall_seconds"])


def leave_process_group() -> None:
    """The end of a PyTorch run's command line (common/loop.run_command's `shutdown`)."""
    if dist.is_initialized():
        dist.destroy_process_group()
