"""A suite's figures (PNG), drawn from its table numbers (tables.suite_table):

- <suite>-headline.png: the headline accuracy per cell, mean with a +-std bar over seeds;
- <suite>-accuracy-vs-pruned.png: the headline against the counted pruned share of visits,
  one panel per regime (the cell without its rule), one colour per rule across panels;
- <suite>-paired.png (suites with a reference row, >= 2 common seeds): each row's per-seed
  difference to the reference (SCAN in the same regime), mean with a 95% t interval; a bar
  clear of zero is the paired t-test's "p<.05";
- quality-per-preparation.png (suite 5): recall and precision of the planted noise per
  preparation epoch.
figures.json beside them holds the plotted numbers.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from reference_trainers.experiments.report import pyplot
from reference_trainers.experiments.suites import SUITES
from reference_trainers.experiments.tables import CANDIDATE_MEASURES, LABELS, suite_table


def _label(cell: dict[str, str]) -> str:
    return " / ".join(cell.values())


def suite_figures(name: str, root: str | Path, seeds=(0, 1, 2), *, miniature: bool = False,
                  out: str | Path | None = None) -> dict[str, Any]:
    """Draw the suite's figures into `out` (default root/figures/<suite>[-mini]/)."""
    plt = pyplot()
    suite = SUITES[name]
    _, numbers = suite_table(name, root, seeds, miniature=miniature)
    out = Path(out) if out is not None else \
        Path(root) / "figures" / (name + ("-mini" if miniature else ""))
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in numbers["rows"] if r["stats"][suite.metric]["mean"] is not None]
    drawn: dict[str, Any] = {}
    if rows:
        labels = [_label(r["cell"]) for r in rows]
        means = [r["stats"][suite.metric]["mean"] for r in rows]
        stds = [r["stats"][suite.metric]["std"] or 0.0 for r in rows]
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(rows) + 2), 4))
        ax.bar(range(len(rows)), means, yerr=stds, capsize=3)
        ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
        ax.set(ylabel=LABELS[suite.metric], title=suite.title)
        fig.tight_layout()
        fig.savefig(out / f"{name}-headline.png", dpi=90)
        plt.close(fig)
        drawn["headline"] = {"file": f"{name}-headline.png", "labels": labels, "means": means,
                             "stds": stds}
        share_key = ("visits_saved_vs_full_set" if "visits_saved_vs_full_set" in suite.columns
                     else "realised_pruned_share")
        shares = [r["stats"][share_key]["mean"] for r in rows]
        drawn["accuracy_vs_pruned"] = _accuracy_vs_pruned(
            plt, name, suite, rows, shares, stds, out,
            xlabel=("share of the full set's sample-visits saved (counted)"
                    if share_key == "visits_saved_vs_full_set"
                    else "pruned share of sample-visits (counted)"))
        paired = _paired(plt, name, suite, rows, out)
        if paired:
            drawn["paired"] = paired
    if numbers.get("quality"):
        drawn["quality"] = _quality(plt, numbers["quality"], out)
    (out / "figures.json").write_text(json.dumps(drawn, indent=1) + "\n")
    return drawn


def split_cell(cell: dict[str, str], suite: Any) -> tuple[str, str]:
    """(panel, series) of a cell: the series is the key rows are compared along (the suite's
    reference key, e.g. "rule", else the cell's last key), the panel the rest ("" if none)."""
    key = suite.reference[0] if suite.reference and suite.reference[0] in cell else list(cell)[-1]
    return " / ".join(v for k, v in cell.items() if k != key), cell[key]


def _accuracy_vs_pruned(plt, name: str, suite: Any, rows: list[dict[str, Any]],
                        shares: list[float], stds: list[float], out: Path, *, xlabel: str
                        ) -> dict[str, Any]:
    """Small multiples: one panel per regime, one colour and marker per rule in every panel,
    so the legend has a line per rule (not per cell) and rows that share a budget stay apart."""
    parts = [split_cell(r["cell"], suite) for r in rows]
    panels = list(dict.fromkeys(p for p, _ in parts))
    series = list(dict.fromkeys(s for _, s in parts))
    cols = min(4, len(panels))
    grid_rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(3.2 * cols + 2.2, 2.7 * grid_rows),
                             squeeze=False, sharex=True)
    means = [r["stats"][suite.metric]["mean"] for r in rows]
    for ax, panel in zip(axes.flat, panels):
        for (p, s), x, y, err in zip(parts, shares, means, stds):
            if p == panel:
                i = series.index(s)
                ax.errorbar(x, y, yerr=err, fmt="osD^v<>P"[i // 10 % 8], color=f"C{i % 10}",
                            capsize=3, label=s)
        ax.set_title(textwrap.fill(panel or suite.title, 30), fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(LABELS[suite.metric], fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel(textwrap.fill(xlabel, 34), fontsize=8)
    handles = {}
    for ax in axes.flat[:len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend([handles[s] for s in series], series, loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(suite.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"{name}-accuracy-vs-pruned.png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return {"file": f"{name}-accuracy-vs-pruned.png",
            "labels": [_label(r["cell"]) for r in rows], "shares": shares, "means": means,
            "panels": panels, "series": series}


def _paired(plt, name: str, suite: Any, rows: list[dict[str, Any]], out: Path
            ) -> dict[str, Any] | None:
    """Per-seed differences to the reference row: mean and 95% t half-width per row."""
    rows = [r for r in rows if r.get("vs_reference") and r["vs_reference"]["paired"]["n"] >= 2]
    if not rows:
        return None
    labels, means, halves = [], [], []
    for r in rows:
        p = r["vs_reference"]["paired"]
        labels.append(_label(r["cell"]))
        means.append(p["mean"])
        halves.append(p["half_width_95"])
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(rows) + 1.5)))
    ax.errorbar(means, range(len(rows)), xerr=halves, fmt="o", capsize=3)
    ax.axvline(0.0, color="grey", lw=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel=f"{LABELS[suite.metric]}: row - {suite.reference[1]}, same seed\n"
                  "(mean, 95% t interval)")
    ax.set_title(textwrap.fill(suite.title, 48), fontsize=10)  # a 6-inch figure clips more
    fig.tight_layout()
    fig.savefig(out / f"{name}-paired.png", dpi=90)
    plt.close(fig)
    return {"file": f"{name}-paired.png", "labels": labels, "means": means,
            "half_widths_95": halves}


def _quality(plt, qrows: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """One panel per measure (ill / redundant x recall / precision), one line per cell, mean
    with a +-std bar over seeds, against the k-th preparation epoch."""
    series: dict[str, dict[str, dict[str, list]]] = {key: {} for key in CANDIDATE_MEASURES}
    for r in qrows:
        for key in CANDIDATE_MEASURES:
            stat = r["stats"][key]
            if stat["mean"] is None:
                continue
            s = series[key].setdefault(_label(r["cell"]), {"k": [], "mean": [], "std": []})
            s["k"].append(r["preparation"])
            s["mean"].append(stat["mean"])
            s["std"].append(stat["std"] or 0.0)
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    for ax, key in zip(axes.flat, CANDIDATE_MEASURES):
        for label, s in series[key].items():
            ax.errorbar(s["k"], s["mean"], yerr=s["std"], fmt="o-", capsize=3, label=label)
        ks = sorted({k for s in series[key].values() for k in s["k"]})
        ax.set_xticks(ks or [1])
        ax.set(title=LABELS[key], ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("preparation epoch (k-th of the run)")
    if any(series.values()):
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "quality-per-preparation.png", dpi=90)
    plt.close(fig)
    return {"file": "quality-per-preparation.png", "series": series}
