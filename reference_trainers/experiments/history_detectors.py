"""Wrong-caption detectors from the loss history, scored offline against planted labels
(issue 20, "choose by measurement").

One SCAN run with planted wrong captions (`--mismatch-share`) and `--loss-history float16`
holds, per preparation epoch, every sample's per-view loss (scan.zarr/history) and, in the
metrics rows, SCAN's own ill-matched end scored against `planted.npz` (ill_precision /
ill_recall / num_ill). Here each detector picks a set per preparation epoch and is scored the
same way; the score-ranked ones take the top M, M = |SCAN's ill end| at that epoch, so that
their precision and recall are comparable with SCAN's at the same set size:

- scan: SCAN's ill-matched end (within-batch), as the run logged it;
- global_last: top M by this epoch's z-scored loss (one epoch, ranked over the whole epoch);
- persist (a): top M by the minimum z over this and the previous preparation epoch;
- mean: top M by the mean z over the preparation epochs so far;
- rising (b): top M by z(this) - z(previous): the learning dynamics alone;
- scan_and_previous (a, per batch): SCAN's ill end now and at the previous preparation
  (needs the previous snapshot's ill bits: --snapshots DIR, a copy of scan.zarr/snapshots);
- scan_not_falling (d): SCAN's ill end without the samples whose z fell since the previous
  preparation (the hard pairs being learned are kept);
- persist@share (c): the top share of N by persist, the set a retire rule would drop for the
  rest of the run under a cap of that share; last@share: the same from one epoch alone;
- persist@same_size, last@same_size: the top |scan_and_previous| by persist / by last, to
  compare intersecting SCAN's ends with ranking at one set size.

    python -m reference_trainers.experiments.history_detectors RUN_DIR [--snapshots DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from scan_core import LossStore
from scan_core.history import store_features

RETIRE_SHARES = (0.05, 0.1, 0.15, 0.2)


def score(chosen: np.ndarray, planted: np.ndarray) -> dict[str, Any]:
    """Precision and recall of a bool set `chosen` against the bool `planted` (None if empty)."""
    hits = int(np.count_nonzero(chosen & planted))
    size = int(np.count_nonzero(chosen))
    return {"size": size, "precision": hits / size if size else None,
            "recall": hits / int(planted.sum()) if planted.any() else None}


def top(values: np.ndarray, count: int) -> np.ndarray:
    """Bool mask of the `count` largest finite values (ties broken by id, lowest first)."""
    mask = np.zeros(len(values), bool)
    finite = np.flatnonzero(np.isfinite(values))
    if count <= 0 or not len(finite):
        return mask
    order = finite[np.lexsort((finite, -values[finite]))]
    mask[order[:count]] = True
    return mask


def ill_mask(snapshot_dir: Path | None, epoch: int, num_samples: int) -> np.ndarray | None:
    """SCAN's ill end as it stood after `epoch`, from a copied snapshot folder, if present."""
    if snapshot_dir is None:
        return None
    path = snapshot_dir / f"epoch_{epoch:08d}" / "ill_bits"
    if not path.exists():
        return None
    bits = np.asarray(zarr.open_array(str(path), mode="r")[...])
    return np.unpackbits(bits, count=num_samples, bitorder="little").astype(bool)


def detectors(run_dir: Path, snapshot_dir: Path | None = None) -> list[dict[str, Any]]:
    """One row per (preparation epoch, detector): epoch, k, detector, size, precision, recall."""
    planted = np.asarray(np.load(run_dir / "planted.npz")["mismatched"], bool)
    n = len(planted)
    rows_by_epoch = {r["epoch"]: r for r in map(json.loads, (run_dir / "metrics.jsonl")
                                                 .read_text().splitlines())
                     if r.get("phase") == "prepare"}
    path = run_dir / "scan.zarr"
    store = LossStore.open(path, LossStore.read_meta(path), writable=False)
    epochs = store.history_epochs()
    out: list[dict[str, Any]] = []
    for k, epoch in enumerate(epochs, start=1):
        logged = rows_by_epoch.get(epoch, {})
        m = int(logged.get("num_ill") or 0)
        feats = store_features(store, epochs[:k], window=2)
        ill_now = ill_mask(snapshot_dir, epoch, n)
        ill_prev = ill_mask(snapshot_dir, epochs[k - 2], n) if k > 1 else None
        rows = {"scan": {"size": m, "precision": logged.get("ill_precision"),
                         "recall": logged.get("ill_recall")}}
        if ill_now is not None:
            rows["scan_recomputed"] = score(ill_now, planted)
        rows["global_last"] = score(top(feats["last"], m), planted)
        rows["mean"] = score(top(feats["mean"], m), planted)
        for share in RETIRE_SHARES:
            rows[f"last@{share:.2f}N"] = score(top(feats["last"], int(share * n)), planted)
        if k > 1:
            rows["persist"] = score(top(feats["persist"], m), planted)
            rows["rising"] = score(top(feats["delta"], m), planted)
            for share in RETIRE_SHARES:
                rows[f"persist@{share:.2f}N"] = score(top(feats["persist"], int(share * n)),
                                                      planted)
            if ill_now is not None:
                with np.errstate(invalid="ignore"):
                    falling = feats["delta"] < 0
                rows["scan_not_falling"] = score(ill_now & ~falling, planted)
                if ill_prev is not None:
                    both = ill_now & ill_prev
                    rows["scan_and_previous"] = score(both, planted)
                    size = int(both.sum())  # the same size, ranked instead of intersected
                    rows["persist@same_size"] = score(top(feats["persist"], size), planted)
                    rows["last@same_size"] = score(top(feats["last"], size), planted)
        out += [{"epoch": epoch, "k": k, "detector": name, **row} for name, row in rows.items()]
    store.close()
    return out


def markdown(rows: list[dict[str, Any]], num_planted: int) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"
    lines = [f"| prep k (epoch) | detector | set size | precision | recall |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} ({r['epoch']}) | {r['detector']} | {r['size']} | "
                     f"{pct(r['precision'])} | {pct(r['recall'])} |")
    lines.append(f"\n{num_planted} planted wrong captions.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--snapshots", type=Path, default=None,
                        help="a folder holding copies of scan.zarr/snapshots/epoch_* "
                             "(the store keeps only the two newest)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    snapshots = args.snapshots or args.run_dir / "scan.zarr" / "snapshots"
    rows = detectors(args.run_dir, snapshots)
    planted = np.load(args.run_dir / "planted.npz")["mismatched"]
    print(markdown(rows, int(np.count_nonzero(planted))))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
