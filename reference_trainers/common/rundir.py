"""The run directory every reference trainer writes, the same for PyTorch and JAX:

    run/
      config.json          the resolved training config (written once; checked on --resume)
      metrics.jsonl        one JSON object per epoch (phase, rho_cur, kept share, loss, ...)
      summary.json         the final result (accuracy, realised pruned share, wall-clock)
      scan.zarr/           the pruner's store (scan_core)
      planted.npz          ids of planted mismatched captions and near-duplicates, if any
      coreset.npy          ids outside the last candidate set (SCAN's coreset by-product)
      skipped.jsonl        corpus samples that could not be read: id, path or key, reason
      checkpoints/epoch_00000007.pt          model + optimiser after epoch 7 (two newest kept,
                                             and every k-th epoch's with --save-frequency k)
      checkpoints/epoch_00000007.pt.crc32    its size and CRC-32, checked before it is loaded

Files are written to a temporary name and renamed, so a run killed mid-write leaves the
previous version intact. What the file system refuses (a file where the directory should be, no
permission, a read-only or full disk) is a `RunDirError` naming the path and the cause; nothing
already written is lost, so the run continues with --resume once the cause is fixed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from reference_trainers.common.errors import CheckpointError, RunDirError, TrainerError
from scan_core.config import LATER_FIELDS

_CKPT = re.compile(r"^epoch_(\d{8})\.(pt|msgpack|npz)$")
SUM_SUFFIX = ".crc32"

_CAUSES = {
    errno.ENOSPC: "the disk is full; free some space",
    errno.EDQUOT: "the disk quota is exhausted; free some space",
    errno.EROFS: "the file system is read-only; choose a writable --out",
    errno.EACCES: "permission denied; choose a directory you can write to",
    errno.EPERM: "operation not permitted; choose a directory you can write to",
    errno.EEXIST: "a file is in the way; choose another --out or move the file",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another --out",
    errno.EISDIR: "a directory is in the way",
}


def os_cause(exc: OSError) -> str:
    """A reader's account of a file-system error: what happened and what to do."""
    return _CAUSES.get(exc.errno or 0, exc.strerror or str(exc))


@contextlib.contextmanager
def guarded(path: str | os.PathLike[str], doing: str) -> Iterator[None]:
    """Turn an OSError raised while `doing` something to `path` into a RunDirError that names
    both and the cause. A non-errno failure of a C++ stream (torch's 'basic_ios::clear') never
    reaches here: checkpoints are serialised in memory and written with Python's own I/O."""
    try:
        yield
    except RunDirError:
        raise
    except OSError as exc:
        raise RunDirError(f"cannot {doing} {os.fspath(path)}: {os_cause(exc)} "
                          f"({type(exc).__name__}: {exc.strerror or exc}). Everything written "
                          "before is intact: fix the cause and continue with --resume.") from exc


def write_bytes_atomically(target: Path, payload: bytes, doing: str) -> None:
    """Write `payload` to a temporary name beside `target`, flush it to disk, rename it over."""
    tmp = target.with_name(target.name + ".tmp")
    with guarded(target, doing):
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)


def file_checksum(payload: bytes) -> dict[str, int]:
    return {"bytes": len(payload), "crc32": zlib.crc32(payload) & 0xFFFFFFFF}


def read_metrics(run_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The metric rows of the run directory at `run_path` ([] before the first epoch). A torn
    last line (what a kill during an append leaves) is dropped with a warning; a damaged line
    before it is a RunDirError naming the line."""
    target = Path(run_path) / "metrics.jsonl"
    if not target.exists():
        return []
    with guarded(target, "read"):
        lines = target.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    rows = []
    for k, (number, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if k == len(numbered) - 1:
                warnings.warn(f"{target}: line {number} is cut short ({exc}), as a run killed "
                              "while writing it leaves it; dropped (the epoch is re-run or its "
                              "row rewritten on --resume).", stacklevel=3)
                break
            raise RunDirError(f"{target}: line {number} is damaged ({exc}); only the last line "
                              "may be torn by a kill. Delete the damaged line (its epoch's row "
                              "is lost) and resume.") from exc
        rows.append(row)
    return rows


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} is a file, not a directory; choose another "
                              "--out or move the file.")
        with guarded(self.path, "create the run directory"):
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "checkpoints").mkdir(exist_ok=True)
        probe = self.path / f".write-test-{os.getpid()}"
        with guarded(self.path, "write in the run directory"):
            probe.write_bytes(b"")
            probe.unlink()
        self.save_frequency = 0  # keep every k-th epoch's checkpoint too (write_config sets it)

    @property
    def store(self) -> Path:
        return self.path / "scan.zarr"

    # -- config -------------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any], *, resume: bool) -> None:
        """Write config.json; on resume, refuse a config that differs in anything but the
        fields a resume may change (epochs to run, evaluation cadence and sets, reporting)."""
        target = self.path / "config.json"
        self.save_frequency = config.get("save_frequency") or 0  # checkpoints kept (below)
        if target.exists() and resume:
            old = self.read_config()
            free = {"resume", "eval_every", "probe_every", "log_every", "quiet",
                    "imagenet_val", "classnames", "val_data", "report_to", "save_frequency",
                    "eval_folder", "eval_train_folder"}
            # A setting added after the run was written reads as its default there (the
            # history-aware rules of issue 20: ill_persistence 1, retire_share 0 = the paper).
            old = {**LATER_FIELDS, **old}
            diffs = [f"{k}: run has {old.get(k)!r}, now {config.get(k)!r}"
                     for k in sorted((set(old) | set(config)) - free) if old.get(k) != config.get(k)]
            if diffs:
                raise TrainerError(f"--resume of {self.path} with another config: "
                                   + "; ".join(diffs) + ". Resume with the run's own flags.")
        elif target.exists() and self.latest_checkpoint() is not None:
            raise TrainerError(f"{self.path} already holds a run; pass --resume to continue it, "
                               "or choose another --out.")
        self._write_json(target, config)

    def read_config(self) -> dict[str, Any]:
        """config.json as written; a damaged one is a RunDirError naming the file."""
        target = self.path / "config.json"
        with guarded(target, "read"):
            text = target.read_text(encoding="utf-8", errors="replace")
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            config = exc
        if not isinstance(config, dict):
            raise RunDirError(f"{target} is damaged (not a JSON object: {config}); a resume "
                              "checks the run's flags against it. Restore it from a backup, or "
                              "rewrite it by running the same command without --resume into a "
                              "new --out and copying that run's config.json here.")
        return config

    # -- metrics ------------------------------------------------------------------------------
    def append_metrics(self, row: dict[str, Any]) -> None:
        with guarded(self.path / "metrics.jsonl", "append to"):
            with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop metric rows after `last_epoch` (a resumed run repeats those epochs)."""
        rows = [r for r in self.read_metrics() if r.get("epoch", -1) <= last_epoch]
        write_bytes_atomically(self.path / "metrics.jsonl",
                               "".join(json.dumps(r) + "\n" for r in rows).encode(), "write")

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._write_json(self.path / "summary.json", summary)

    def save_array(self, name: str, **arrays: np.ndarray) -> None:
        tmp = self.path / (name + ".tmp.npz")
        with guarded(tmp, "write"):
            np.savez(tmp, **arrays)
            os.replace(tmp, self.path / (name + ".npz"))

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_path(self, epoch: int, suffix: str = "pt") -> Path:
        return self.path / "checkpoints" / f"epoch_{epoch:08d}.{suffix}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Every checkpoint file (any framework's), as (epoch, path), oldest first."""
        with guarded(self.path / "checkpoints", "list"):
            entries = list((self.path / "checkpoints").iterdir())
        return sorted((int(m.group(1)), e) for e in entries if (m := _CKPT.match(e.name)))

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def write_checkpoint(self, epoch: int, payload: bytes, suffix: str = "pt",
                         keep: int = 2) -> Path:
        """Write a serialised checkpoint and its checksum file beside it (each to a temporary
        name, then renamed: the checksum first, so a checkpoint in place always has one), then
        drop all but the `keep` newest epochs and, with save_frequency k in config.json
        (open_clip's --save-frequency), the epochs whose count (epoch + 1) k divides."""
        target = self.checkpoint_path(epoch, suffix)
        sums = json.dumps(file_checksum(payload)).encode()
        write_bytes_atomically(target.with_name(target.name + SUM_SUFFIX), sums,
                               "write the checkpoint checksum")
        write_bytes_atomically(target, payload, "write the checkpoint")
        found = sorted({e for e, _ in self.checkpoints()})
        every = self.save_frequency
        for old in found[:-keep]:
            if every and (old + 1) % every == 0:
                continue
            for entry in (self.path / "checkpoints").glob(f"epoch_{old:08d}.*"):
                entry.unlink(missing_ok=True)
        return target

    def read_checkpoint(self, path: Path) -> bytes:
        """The checkpoint's bytes after checking them against its checksum file; a
        CheckpointError when they differ (a truncated, emptied or damaged file). A checkpoint
        written before checksums existed has none: it is read with a warning."""
        with guarded(path, "read the checkpoint"):
            payload = path.read_bytes()
        sums_path = path.with_name(path.name + SUM_SUFFIX)
        if not sums_path.exists():
            warnings.warn(f"{path} has no checksum file ({sums_path.name}); loading it "
                          "unverified.", stacklevel=2)
            return payload
        try:
            expected = json.loads(sums_path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"the checksum file {sums_path} is unreadable ({exc})") from exc
        if file_checksum(payload) != expected:
            raise CheckpointError(
                f"{path} fails its checksum ({len(payload)} bytes, CRC-32 "
                f"{zlib.crc32(payload) & 0xFFFFFFFF}; written as {expected.get('bytes')} bytes, "
                f"CRC-32 {expected.get('crc32')}): it was truncated or damaged after it was "
                "written")
        return payload

    @staticmethod
    def _write_json(target: Path, data: dict[str, Any]) -> None:
        write_bytes_atomically(target, (json.dumps(data, indent=2, sort_keys=True) + "\n")
                               .encode(), "write")
