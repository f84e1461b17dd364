"""The run directory every reference trainer writes, the same for PyTorch and JAX:

    run/
      config.json          the resolved training config (written once; checked on --resume)
      metrics.jsonl        one JSON object per epoch (phase, rho_cur, kept share, loss, ...)
      summary.json         the final result (accuracy, realised pruned share, wall-clock)
      scan.zarr/           the pruner's store (scan_core)
      planted.npz          ids of planted mismatched captions and near-duplicates, if any
      coreset.npy          ids outside the last candidate set (SCAN's coreset by-product)
      checkpoints/epoch_00000007.pt   model + optimiser after epoch 7 (the two newest kept)

Files are written to a temporary name and renamed, so a run killed mid-write leaves the
previous version intact.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from reference_trainers.common.errors import TrainerError

_CKPT = re.compile(r"^epoch_(\d{8})\.(pt|msgpack|npz)$")


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)

    @property
    def store(self) -> Path:
        return self.path / "scan.zarr"

    # -- config -------------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any], *, resume: bool) -> None:
        """Write config.json; on resume, refuse a config that differs in anything but the
        fields a resume may change (epochs to run, evaluation cadence)."""
        target = self.path / "config.json"
        if target.exists() and resume:
            old = json.loads(target.read_text())
            free = {"resume", "eval_every", "probe_every", "log_every", "quiet"}
            diffs = [f"{k}: run has {old.get(k)!r}, now {config.get(k)!r}"
                     for k in sorted((set(old) | set(config)) - free) if old.get(k) != config.get(k)]
            if diffs:
                raise TrainerError(f"--resume of {self.path} with another config: "
                                   + "; ".join(diffs) + ". Resume with the run's own flags.")
        elif target.exists() and self.latest_checkpoint() is not None:
            raise TrainerError(f"{self.path} already holds a run; pass --resume to continue it, "
                               "or choose another --out.")
        self._write_json(target, config)

    # -- metrics ------------------------------------------------------------------------------
    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        target = self.path / "metrics.jsonl"
        if not target.exists():
            return []
        return [json.loads(line) for line in target.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop metric rows after `last_epoch` (a resumed run repeats those epochs)."""
        rows = [r for r in self.read_metrics() if r.get("epoch", -1) <= last_epoch]
        tmp = self.path / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.path / "metrics.jsonl")

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._write_json(self.path / "summary.json", summary)

    def save_array(self, name: str, **arrays: np.ndarray) -> None:
        tmp = self.path / (name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, self.path / (name + ".npz"))

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_path(self, epoch: int, suffix: str = "pt") -> Path:
        return self.path / "checkpoints" / f"epoch_{epoch:08d}.{suffix}"

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = []
        for entry in (self.path / "checkpoints").iterdir():
            match = _CKPT.match(entry.name)
            if match:
                found.append((int(match.group(1)), entry))
        return max(found) if found else None

    def commit_checkpoint(self, tmp: Path, epoch: int, suffix: str = "pt", keep: int = 2) -> None:
        """Rename a fully written temporary file into place, then drop all but `keep` newest."""
        os.replace(tmp, self.checkpoint_path(epoch, suffix))
        found = sorted(int(m.group(1)) for e in (self.path / "checkpoints").iterdir()
                       if (m := _CKPT.match(e.name)))
        for old in found[:-keep]:
            for entry in (self.path / "checkpoints").glob(f"epoch_{old:08d}.*"):
                entry.unlink(missing_ok=True)

    @staticmethod
    def _write_json(target: Path, data: dict[str, Any]) -> None:
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, target)
