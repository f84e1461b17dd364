"""Where a resumed run continues from: the newest epoch with both a verified checkpoint and a
completed store snapshot (numpy only; the PyTorch and JAX trainers share it).

A run writes the pruner's snapshot of an epoch, then the checkpoint of that epoch; each keeps
its two newest. A kill leaves at most the newest of either incomplete, and damage (a truncated
or edited file, a deleted folder) can take out either side. `resume_point` walks the
checkpoints newest first and takes the first whose bytes match its checksum file and whose
epoch the store holds a completed snapshot of; every one it passes over is named in a warning.
What cannot be continued exactly is refused with the way out:

    checkpoints, no snapshot at all     ResumeError (the pruner's state is lost): start afresh
    snapshots, no checkpoint at all     warning; the run starts over from epoch 0
    no pair matches                     ResumeError naming the checkpoints and snapshots held
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from reference_trainers.common.errors import CheckpointError, ResumeError
from reference_trainers.common.rundir import RunDir

__all__ = ["ResumePoint", "resume_point", "store_epochs"]


@dataclass(frozen=True)
class ResumePoint:
    """epoch: the last completed epoch to continue after (-1: start afresh); path and payload:
    its checkpoint file and verified bytes (None when epoch is -1)."""

    epoch: int
    path: Path | None = None
    payload: bytes | None = None


def store_epochs(store: Path) -> tuple[list[int], str]:
    """Epochs with a completed snapshot in the store at `store` (ascending), and, when it
    cannot be read, why (an empty list with the reason)."""
    from scan_core import LossStore, ScanError

    if not store.is_dir() or not any(store.iterdir()):
        return [], "the store does not exist"
    try:
        return LossStore.open(store, LossStore.read_meta(store), writable=False).epochs(), ""
    except ScanError as exc:
        return [], f"the store cannot be read ({exc})"


def resume_point(run: RunDir, suffix: str) -> ResumePoint:
    """The newest (checkpoint, snapshot) pair of `run` that both exist and verify; `suffix`:
    this framework's checkpoint files ('pt' for PyTorch, 'npz' for JAX)."""
    checkpoints = [(e, p) for e, p in run.checkpoints() if p.suffix == "." + suffix]
    snapshots, why = store_epochs(run.store)
    if not checkpoints:
        if snapshots:
            warnings.warn(f"{run.path}: the store holds snapshots of epochs {snapshots} but "
                          f"{run.path / 'checkpoints'} holds no .{suffix} checkpoint (deleted?): "
                          "the model's weights are lost, so the run starts over from epoch 0 "
                          "and its snapshots are discarded.", stacklevel=2)
        return ResumePoint(-1)
    held = [e for e, _ in checkpoints]
    if not snapshots:
        raise ResumeError(
            f"{run.path}: checkpoints of epochs {held} but no completed store snapshot in "
            f"{run.store} ({why or 'deleted, or never completed'}): the pruner's state is lost, "
            "so these checkpoints cannot be continued exactly. To start the run over from epoch "
            f"0, delete {run.path / 'checkpoints'} and run with --resume again, or choose another "
            "--out.")
    passed: list[str] = []
    for epoch, path in reversed(checkpoints):
        if epoch not in snapshots:
            passed.append(f"epoch {epoch}: the store has no completed snapshot of it "
                          f"(it holds {snapshots})")
            continue
        try:
            payload = run.read_checkpoint(path)
        except CheckpointError as exc:
            passed.append(f"epoch {epoch}: {exc}")
            continue
        if passed:
            warnings.warn(f"{run.path}: resuming after epoch {epoch}, not the newest checkpoint: "
                          + "; ".join(passed) + f". Epochs after {epoch} are run again.",
                          stacklevel=2)
        return ResumePoint(epoch, path, payload)
    raise ResumeError(
        f"{run.path}: no checkpoint can be resumed: " + "; ".join(passed) + ". Restore the files "
        f"from a backup, or delete {run.path / 'checkpoints'} and {run.store} to start over.")
