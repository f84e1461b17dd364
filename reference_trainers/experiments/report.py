"""Pictures of one run: `python -m reference_trainers.experiments report RUN_DIR [--out DIR]`.

Reads a run directory (metrics.jsonl, summary.json, config.json and the Zarr store) and draws
five PNGs into DIR (default RUN_DIR/report/), with report.json beside them holding the numbers
behind every figure:

- loss_histograms.png: per preparation epoch, the per-sample loss (mean over views) with the
  two cut-offs: the rho_low quantile (redundant end) and the 1 - rho_high quantile (ill end)
  of that epoch's losses. With scope="batch" SCAN ranks inside each batch, so these lines are
  the same shares taken over the whole epoch. Needs the loss history (--loss-history float16).
- pruned_share.png: the share of N pruned in each epoch against the schedule
  rho_cur * |D'| / N, and the counted cumulative saving.
- candidate_churn.png: per preparation epoch, the ids of D' kept from the previous D', entered
  and left, and their Jaccard overlap (metrics rows, common/planted.PreparationStats).
- curves.png: training loss and the accuracies per epoch where they were measured.
- compute_saved.png: samples trained per epoch against N, and the counted saving.

A figure the run cannot support is not drawn, and report.json says why under "not_drawn".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from scan_core import LossStore

BINS = 40
ACCURACIES = ("zero_shot_top1", "knn_top1", "linear_probe_top1")


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display needed (CI, servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read(run_dir: Path) -> tuple[list[dict], dict, dict]:
    from reference_trainers.common.rundir import read_metrics

    rows = read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text()) \
        if (run_dir / "summary.json").exists() else {}
    config = json.loads((run_dir / "config.json").read_text())
    return rows, summary, config


def view_mean(losses: np.ndarray) -> np.ndarray:
    """(num_views, N) losses, NaN where unseen -> the mean over the seen views of each sample
    seen at all (float64, unseen samples dropped)."""
    losses = np.asarray(losses, dtype=np.float64)
    seen = np.isfinite(losses)
    count = seen.sum(axis=0)
    total = np.where(seen, losses, 0.0).sum(axis=0)
    return total[count > 0] / count[count > 0]


def loss_histograms(run_dir: Path, rows: list[dict], config: dict) -> dict[str, Any]:
    store_path = run_dir / "scan.zarr"
    if not store_path.exists():
        raise LookupError("the run has no SCAN store (scan.zarr)")
    store = LossStore.open(store_path, LossStore.read_meta(store_path), writable=False)
    epochs = store.history_epochs()
    if not epochs and config.get("loss_history"):
        raise LookupError("the run kept no loss history: it had no preparation epoch (rule "
                          f"{config.get('pruning')!r}, or warm-up never ended)")
    if not epochs:
        raise LookupError("the run kept no loss history: train with --loss-history float16 "
                          "(the experiment suites do) to draw the loss histograms")
    by_epoch = {r["epoch"]: r for r in rows}
    panels = []
    for epoch in epochs:
        loss = view_mean(store.read_history(epoch))
        row = by_epoch.get(epoch, {})
        rho_low, rho_high = float(row.get("rho_low", 0.0)), float(row.get("rho_high", 0.0))
        counts, edges = np.histogram(loss, bins=BINS)
        panels.append({
            "epoch": epoch, "num_seen": int(len(loss)), "counts": counts.tolist(),
            "edges": edges.tolist(), "rho_low": rho_low, "rho_high": rho_high,
            "low_cutoff": float(np.quantile(loss, rho_low)) if rho_low > 0 else None,
            "high_cutoff": float(np.quantile(loss, 1 - rho_high)) if rho_high > 0 else None})
    return {"panels": panels}


def pruned_share(rows: list[dict], config: dict, num_samples: int) -> dict[str, Any]:
    scheduled = config.get("pruning") != "infobatch"  # InfoBatch has no rho_cur x |D'| schedule
    return {"epochs": [r["epoch"] for r in rows],
            "phase": [r["phase"] for r in rows],
            "pruned_share": [1 - r["num_kept"] / num_samples for r in rows],
            "schedule": [r["rho_cur"] * r["num_candidates"] / num_samples
                         if scheduled and r["phase"] == "mutate" else 0.0 for r in rows]
            if scheduled else None,
            "realised_saving": [r["realised_saving"] for r in rows]}


def churn(rows: list[dict]) -> dict[str, Any]:
    preps = [r for r in rows if r.get("churn_jaccard") is not None or "churn_kept" in r]
    if not preps:
        raise LookupError("no two preparation epochs with churn recorded (a run needs at least "
                          "two SCAN cycles; runs before the churn hook lack it)")
    return {key: [r[field] for r in preps] for key, field in (
        ("epochs", "epoch"), ("kept", "churn_kept"), ("entered", "churn_entered"),
        ("left", "churn_left"), ("jaccard", "churn_jaccard"))}


def curves(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {"epochs": [r["epoch"] for r in rows],
                           "train_loss": [r.get("train_loss") for r in rows]}
    for key in ACCURACIES:
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            out[key] = {"epochs": [p[0] for p in points], "values": [p[1] for p in points]}
    return out


def compute_saved(rows: list[dict], summary: dict, num_samples: int) -> dict[str, Any]:
    visits = [int(r["num_kept"]) for r in rows]
    return {"epochs": [r["epoch"] for r in rows], "samples": visits, "full": num_samples,
            "sample_visits": int(sum(visits)), "full_visits": num_samples * len(rows),
            "realised_pruned_share": summary.get("realised_pruned_share"),
            "seconds": [r["seconds"] for r in rows]}


def _draw(name: str, data: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    if name == "loss_histograms":
        panels = data["panels"]
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
        for ax, p in zip(axes[0], panels):
            ax.stairs(p["counts"], p["edges"], fill=True, alpha=0.6)
            for cut, color, label in ((p["low_cutoff"], "tab:green", f"redundant {p['rho_low']:.2f}"),
                                      (p["high_cutoff"], "tab:red", f"ill {p['rho_high']:.2f}")):
                if cut is not None:
                    ax.axvline(cut, color=color, linestyle="--", label=label)
            ax.set(title=f"preparation epoch {p['epoch']}", xlabel="per-sample loss (view mean)",
                   ylabel="samples")
            ax.legend(fontsize=7)
    else:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        if name == "pruned_share":
            ax.bar(data["epochs"], data["pruned_share"], alpha=0.6, label="pruned share of N")
            if data["schedule"] is not None:
                ax.plot(data["epochs"], data["schedule"], "kD", label="schedule rho_cur·|D'|/N")
            ax.plot(data["epochs"], data["realised_saving"], "r-", label="cumulative saving")
            ax.set(xlabel="epoch", ylabel="share")
        elif name == "candidate_churn":
            ep = np.asarray(data["epochs"])
            ax.bar(ep, data["kept"], label="kept")
            ax.bar(ep, data["entered"], bottom=data["kept"], label="entered")
            ax.bar(ep, [-x for x in data["left"]], label="left")
            ax.set(xlabel="preparation epoch", ylabel="ids of D'",
                   title="Jaccard " + ", ".join("-" if j is None else f"{j:.2f}"
                                                for j in data["jaccard"]))
        elif name == "curves":
            ax.plot(data["epochs"], data["train_loss"], "k-", label="train loss (kept samples)")
            ax.set(xlabel="epoch", ylabel="train loss, mean over the kept samples")
            twin = ax.twinx()
            for key in ACCURACIES:
                if key in data:
                    twin.plot(data[key]["epochs"], data[key]["values"], "o-", label=key)
            twin.set_ylabel("top-1")
            twin.legend(fontsize=7, loc="center right")
        elif name == "compute_saved":
            ax.bar(data["epochs"], data["samples"], alpha=0.7, label="samples trained")
            ax.axhline(data["full"], color="k", linestyle="--", label="N (full data)")
            share = data["realised_pruned_share"]
            ax.set(xlabel="epoch", ylabel="samples",
                   title="saved " + ("-" if share is None else f"{share:.1%}") + " of visits")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(run_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Draw every figure the run supports into `out`; returns (and writes as report.json)
    {"figures": {name: {"file", "data"}}, "not_drawn": {name: reason}}."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows, summary, config = _read(run_dir)
    store_path = run_dir / "scan.zarr"
    num_samples = int(LossStore.read_meta(store_path)["num_samples"]) if store_path.exists() \
        else int(max(r["num_kept"] for r in rows))
    makers = {"loss_histograms": lambda: loss_histograms(run_dir, rows, config),
              "pruned_share": lambda: pruned_share(rows, config, num_samples),
              "candidate_churn": lambda: churn(rows),
              "curves": lambda: curves(rows),
              "compute_saved": lambda: compute_saved(rows, summary, num_samples)}
    result: dict[str, Any] = {"run_dir": str(run_dir), "num_samples": num_samples,
                              "figures": {}, "not_drawn": {}}
    for name, make in makers.items():
        try:
            data = make()
        except LookupError as exc:
            result["not_drawn"][name] = str(exc)
            continue
        path = out / f"{name}.png"
        _draw(name, data, path)
        result["figures"][name] = {"file": path.name, "data": data}
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
