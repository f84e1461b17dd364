"""Second-stage runs: config values read from a finished first-stage run.

- `infobatch_budget`: InfoBatch drops a share r of the samples whose last loss is below the
  mean, in epochs 1 .. ceil(delta * E) - 1 (scan_core/rules.py). Its realised share of
  sample-visits is about r * w * P / E, with w the below-mean fraction and P the pruning
  epochs, so r = s * E / (w * P) lands on SCAN's measured share s (summary.json of the SCAN
  run of the same seed). w is measured on SCAN's last stored preparation losses (loss history)
  when there are any, else taken as 1/2 (a SCAN run kept without history). A source whose run
  folder is gone (its JSON copied from another machine) is refused: guessing w would set a
  budget nobody measured. r is capped below 1; the table shows both realised shares, so a miss
  is visible, never hidden.
- `random_budget`: the random rule with `target_rate` set to another run's measured share of
  sample-visits saved (issue 20: a history-aware rule's saving is not SCAN's, so random's
  same-budget row cannot simply share SCAN's per-epoch |D'|). The target is solved once the
  warm-up has ended, so the realised shares land close, not equal: the table shows both.
- `coreset`: the training ids of a retraining run: SCAN's exported coreset (coreset.npy), a
  uniformly random subset of the same size, or the static rule's coreset cut or filled (at
  random, seeded) to the same size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from reference_trainers.experiments.report import view_mean
from scan_core import LossStore

INFOBATCH_DELTA = 0.875  # ScanConfig's default: full data from epoch delta * E on
MAX_PRUNE_RATIO = 0.95


class DerivationError(RuntimeError):
    """A second-stage run cannot be set up (its source failed or lacks a file)."""


def result_of(results_dir: Path, run_id: str) -> dict[str, Any]:
    path = results_dir / f"{run_id}.json"
    if not path.exists():
        raise DerivationError(f"source run {run_id} has no result ({path} is missing); run "
                              "its suite's first stage first.")
    result = json.loads(path.read_text())
    if result.get("status") != "ok":
        raise DerivationError(f"source run {run_id} failed: {result.get('error')}")
    return result


def below_mean_fraction(run_dir: Path) -> float | None:
    """Share of samples whose (view-mean) loss is below the mean, in the last preparation
    epoch's loss history of a run; None without history."""
    store_path = run_dir / "scan.zarr"
    if not store_path.exists():
        return None
    store = LossStore.open(store_path, LossStore.read_meta(store_path), writable=False)
    epochs = store.history_epochs()
    if not epochs:
        return None
    losses = view_mean(store.read_history(epochs[-1]))
    return float((losses < losses.mean()).mean()) if len(losses) else None


def infobatch_ratio(share: float, epochs: int, below_mean: float) -> tuple[float, int]:
    """(r, pruning epochs P) with r * below_mean * P / epochs == share, capped."""
    pruning_epochs = max(0, math.ceil(INFOBATCH_DELTA * epochs) - 1)
    if pruning_epochs == 0 or below_mean <= 0:
        return 0.0, pruning_epochs
    return min(MAX_PRUNE_RATIO, share * epochs / (below_mean * pruning_epochs)), pruning_epochs


def derive(spec: Any, root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config overrides, a record for the result JSON) of a second-stage run. A coreset run's
    override `train_ids` is an int64 id array; the worker saves it beside the run."""
    kind = spec.derive["kind"]
    results, runs = root / "results", root / "runs"
    source = result_of(results, spec.derive["source"])
    if kind == "infobatch_budget":
        share = float(source["summary"]["realised_pruned_share"])
        if not (runs / spec.derive["source"] / "scan.zarr").exists():
            raise DerivationError(
                f"source run {spec.derive['source']} has a result but no run folder with its "
                f"store ({runs / spec.derive['source']}): InfoBatch's budget needs its loss "
                "history; delete the source's JSON and run the grid again to retrain it.")
        measured = below_mean_fraction(runs / spec.derive["source"])
        below_mean = 0.5 if measured is None else measured
        epochs = int(source["config"]["epochs"])
        ratio, pruning_epochs = infobatch_ratio(share, epochs, below_mean)
        return {"infobatch_prune_ratio": ratio}, {
            "matched_share": share, "below_mean_fraction": below_mean,
            "below_mean_measured": measured is not None, "pruning_epochs": pruning_epochs,
            "infobatch_prune_ratio": ratio, "capped": ratio >= MAX_PRUNE_RATIO}
    if kind == "random_budget":  # random at the measured saving of another rule's run
        share = float(source["summary"]["realised_pruned_share"])
        return {"target_rate": share}, {"matched_share": share}
    if kind == "coreset":
        ids, record = coreset_ids(spec, root, source)
        return {"train_ids": ids}, record
    raise DerivationError(f"unknown derivation {kind!r}")


def coreset_ids(spec: Any, root: Path, source: dict[str, Any]) -> tuple[np.ndarray, dict]:
    """The training ids of a coreset retraining run, and what they are."""
    runs = root / "runs"
    scan_dir = runs / spec.derive["source"]
    core = np.load(scan_dir / "coreset.npy") if (scan_dir / "coreset.npy").exists() else None
    if core is None:
        raise DerivationError(f"{scan_dir} has no coreset.npy (no preparation epoch ran)")
    num_samples = int(LossStore.read_meta(scan_dir / "scan.zarr")["num_samples"])
    size = len(core)
    rng = np.random.default_rng([spec.seed, 6])
    subset = spec.derive["subset"]
    record: dict[str, Any] = {"subset": subset, "size": size, "num_source_samples": num_samples}
    if subset == "scan":
        ids = core
    elif subset == "random":
        ids = rng.choice(num_samples, size=size, replace=False)
    elif subset == "static":
        result_of(root / "results", spec.derive["static_source"])
        static = np.load(runs / spec.derive["static_source"] / "coreset.npy")
        record["static_coreset_size"] = len(static)
        if len(static) >= size:
            ids = rng.choice(static, size=size, replace=False)
        else:
            rest = np.setdiff1d(np.arange(num_samples), static)
            ids = np.concatenate([static, rng.choice(rest, size=size - len(static),
                                                     replace=False)])
    else:
        raise DerivationError(f"unknown coreset subset {subset!r}")
    return np.sort(np.asarray(ids, dtype=np.int64)), record
