"""One run of a grid, in this process: resolve its config, train (or resume), write its JSON.

    python -m reference_trainers.experiments.worker --spec SPEC.json --root runs/experiments

The runner starts one such process per run (`--threads T` torch threads each); tests and
`--workers 0` call `execute` in-process. A run directory that already holds a config resumes
through the trainer's own resume (same plans, same draws); the trainer's errors (an
unreachable target rate, a bad config) and any other exception end as a JSON with
status "failed" and the message, never as a crashed grid.

Two knobs the trainers' configs do not carry are added here (ExperimentConfig):
`infobatch_prune_ratio` (InfoBatch's r, set from SCAN's measured budget) and `train_ids` (a
run on a fixed subset of the training data: the coreset retraining of suite 6).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from reference_trainers.experiments.derive import DerivationError, derive
from reference_trainers.experiments.suites import MACHINE_FIELDS, RunSpec

TRAIN_IDS_FILE = "train_ids.npy"


def trainer_module(trainer: str):
    """(the trainer's module with train() and build_data(), its presets, its config class)."""
    if trainer == "clip":
        from reference_trainers.clip import train as module
        from reference_trainers.common.config import PRESETS, TrainConfig
        return module, PRESETS, TrainConfig
    if trainer == "moco":
        from reference_trainers.moco import train as module
        from reference_trainers.common.moco_config import PRESETS, MocoConfig
        return module, PRESETS, MocoConfig
    raise ValueError(f"unknown trainer {trainer!r}; use clip or moco")


@functools.cache
def experiment_config_class(base: type) -> type:
    """`base` (TrainConfig / MocoConfig) plus the two experiment-only fields."""

    @dataclasses.dataclass(frozen=True)
    class ExperimentConfig(base):  # type: ignore[misc, valid-type]
        infobatch_prune_ratio: float | None = None  # goes into `scan`
        train_ids: str | None = None   # a file in the run directory: int64 ids to train on

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.infobatch_prune_ratio is not None:
                object.__setattr__(self, "scan", self.scan.replace(
                    infobatch_prune_ratio=self.infobatch_prune_ratio))

    ExperimentConfig.__qualname__ = ExperimentConfig.__name__ = f"Experiment{base.__name__}"
    return ExperimentConfig


def build_config(spec: RunSpec, overrides: dict[str, Any]):
    from reference_trainers.common.config import with_settings

    _, presets, base = trainer_module(spec.trainer)
    preset = presets[spec.preset]()
    cls = experiment_config_class(base)
    config = cls(**{f.name: getattr(preset, f.name) for f in dataclasses.fields(base)})
    return with_settings(config, **overrides)


def training_data(module: Any, cfg: Any, ids: np.ndarray | None) -> dict[str, Any]:
    """The keyword arguments for `module.train`: {} (the trainer builds its data), or with `ids`
    {"data": (train cut to ids, test, tokenizer)} (CLIP only: a coreset retraining)."""
    if ids is None:
        return {}
    if module.__name__ != "reference_trainers.clip.train":
        raise ValueError(f"a training subset (train_ids) needs the CLIP trainer, got "
                         f"{module.__name__}; drop train_ids from this run's spec")
    train, *rest = module.build_data(cfg)
    return {"data": (subset_image_text(train, ids), *rest)}


def subset_image_text(train: Any, ids: np.ndarray) -> Any:
    """ImageTextData cut to `ids` (sorted positions); planted duplicates re-pointed (-1 when
    the source image was left out)."""
    import torch

    from reference_trainers.common.torch_data import ImageTextData

    if not isinstance(train, ImageTextData):
        raise ValueError(f"a training subset (train_ids) needs the CLIP image-text data "
                         f"(Fashion-MNIST), got {type(train).__name__}; drop train_ids or "
                         "--data")
    idx = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    position = np.full(len(train), -1, dtype=np.int64)
    position[ids] = np.arange(len(ids))
    dup = train.duplicate_of.numpy()[ids]
    dup = np.where(dup >= 0, position[np.maximum(dup, 0)], -1)
    return type(train)(train.images[idx], train.tokens[idx], train.labels[idx],
                       caption_labels=train.caption_labels[idx],
                       mismatched=train.mismatched[idx], duplicate_of=torch.from_numpy(dup),
                       source_ids=train.source_ids[idx],
                       texts=tuple(train.texts[i] for i in ids) if train.texts else ())


BUSY_EXIT = 4  # the worker's exit code when another process holds the run


@contextlib.contextmanager
def run_lock(root: Path, run_id: str):
    """Hold root/locks/<run_id>.lock exclusively (yields False when another process holds
    it): two grids on one root never train the same run directory at once."""
    folder = Path(root) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{run_id}.lock", "w", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def execute(spec: RunSpec, root: Path, *, threads: int | None = None,
            data_dir: str | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Run `spec` under `root` (runs/<id>/ and results/<id>.json); returns the result.
    `stop_after` (tests): train at most that many epochs and write no result (resumable).
    A run another process is training returns status "busy" and writes nothing."""
    with run_lock(Path(root), spec.run_id) as held:
        if not held:
            return {"run_id": spec.run_id, "status": "busy",
                    "error": "another process is training this run; left to it"}
        done = Path(root) / "results" / f"{spec.run_id}.json"
        if done.exists() and json.loads(done.read_text()).get("status") == "ok":
            return json.loads(done.read_text())  # finished while we waited to start
        return _execute(spec, Path(root), threads=threads, data_dir=data_dir,
                        stop_after=stop_after)


def _execute(spec: RunSpec, root: Path, *, threads: int | None, data_dir: str | None,
             stop_after: int | None) -> dict[str, Any]:
    from reference_trainers.common.errors import TrainerError
    from reference_trainers.common.host import cpu_name
    from scan_core import ScanError

    run_dir = root / "runs" / spec.run_id
    started = time.time()
    result: dict[str, Any] = {"run_id": spec.run_id, "spec": spec.to_dict(),
                              "host": {"node": platform.node(), "cpus": os.cpu_count(),
                                       "cpu": cpu_name()}}
    try:
        overrides = dict(spec.overrides)
        ids = None
        if spec.derive:
            derived, record = derive(spec, root)
            result["derived"] = record
            if "train_ids" in derived:
                ids = derived.pop("train_ids")
                record["train_ids_sha1"] = hashlib.sha1(ids.tobytes()).hexdigest()[:12]
                run_dir.mkdir(parents=True, exist_ok=True)
                np.save(run_dir / TRAIN_IDS_FILE, ids)
                derived["train_ids"] = TRAIN_IDS_FILE
            overrides.update(derived)
        resume = (run_dir / "config.json").exists()
        machine = {"threads": threads, "data_dir": data_dir}
        if resume:  # keep the machine fields the run started with: resume refuses changes
            old = json.loads((run_dir / "config.json").read_text())
            machine = {k: old.get(k) for k in MACHINE_FIELDS}
        overrides.update({k: v for k, v in machine.items() if v is not None})
        cfg = build_config(spec, overrides)
        result["config"] = cfg.to_dict()
        result["resumed"] = resume
        module = trainer_module(spec.trainer)[0]
        summary = module.train(cfg, str(run_dir), resume=resume, quiet=True,
                               stop_after=stop_after, **training_data(module, cfg, ids))
        if stop_after is not None:
            return result
        num_samples = len(ids) if ids is not None else _num_samples(run_dir)
        result.update(status="ok", error=None, summary={**summary, "num_samples": num_samples})
    except (ScanError, TrainerError, DerivationError) as exc:
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a grid goes on; the traceback goes in the JSON
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc()[-4000:])
    result["metrics"] = _metrics(run_dir)
    result["process_seconds"] = time.time() - started
    result["code_version"] = code_version()
    write_result(root, result)
    return result


def code_version() -> str | None:
    """The git commit the run's code came from, '+dirty' when the tree had uncommitted changes
    (None outside a git checkout): a result is only as reproducible as its code."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _num_samples(run_dir: Path) -> int | None:
    from scan_core import LossStore

    store = run_dir / "scan.zarr"
    return int(LossStore.read_meta(store)["num_samples"]) if store.exists() else None


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    from reference_trainers.common.rundir import read_metrics

    return read_metrics(run_dir)  # a torn last line (a killed run) is dropped with a warning


def write_result(root: Path, result: dict[str, Any]) -> Path:
    """results/<run_id>.json, written to a temporary name and renamed (never half-written)."""
    folder = Path(root) / "results"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{result['run_id']}.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True, default=_jsonable) + "\n")
    os.replace(tmp, target)
    return target


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference_trainers.experiments.worker")
    parser.add_argument("--spec", required=True, help="a RunSpec as JSON (the runner writes it)")
    parser.add_argument("--root", required=True, help="the grid's output folder")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    spec = RunSpec.from_dict(json.loads(Path(args.spec).read_text()))
    result = execute(spec, Path(args.root), threads=args.threads, data_dir=args.data_dir)
    return {"ok": 0, "busy": BUSY_EXIT}.get(result["status"], 3)


if __name__ == "__main__":
    raise SystemExit(main())
