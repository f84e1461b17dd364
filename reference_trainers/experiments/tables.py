"""A suite's table: mean +- std over seeds per cell, as markdown and as JSON numbers.

std is the sample standard deviation (ddof 1) over the seeds that finished; with one seed
there is none to show. Each row is also held against the suite's reference row (SCAN, in the
same regime), two ways:
- unpaired: the difference of the headline means, "beyond" when it exceeds the sum of the two
  standard deviations (both with >= 2 seeds), "within" otherwise;
- paired by seed: a seed fixes the data (planted noise, captions), the initialisation and the
  order, so the per-seed differences row - reference remove what the two runs share. Their
  mean, std and a two-sided paired t-test at 5% ("p<.05" when |t| exceeds Student's critical
  value for n - 1 degrees of freedom, "n.s." otherwise; needs >= 2 common seeds).
The same paired test is run on the suite's secondary metric (the linear probe for CLIP, kNN
for MoCo), its own column: one significant test among several is a lead, not a finding.
`against` holds every row against another row of the same regime instead (e.g. full data,
or random at a rule's own budget: `table beyond --against full`), and `preparations` adds the
candidates' recall and precision per preparation epoch (what suite 5 always shows).
Failed runs are counted and
their first error shown, never averaged in. Wall-clock is the trainer's training time
(evaluation excluded), summed over resumes; the pruned share is summary.json's counted
`realised_pruned_share`.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from reference_trainers.experiments.quality import preparation_rows
from reference_trainers.experiments.runner import results_of
from reference_trainers.experiments.suites import SUITES, Suite, match_cells, suite_runs

LABELS = {"zero_shot_top1": "zero-shot top-1", "linear_probe_top1": "linear probe top-1",
          "knn_top1": "kNN top-1", "realised_pruned_share": "pruned (visits)",
          "wall_seconds": "train s", "num_samples": "train samples",
          "ill_recall": "ill recall", "ill_precision": "ill precision",
          "redundant_recall": "redundant recall", "redundant_precision": "redundant precision",
          "churn_jaccard": "D' Jaccard vs previous", "epoch": "epoch",
          "visits_saved_vs_full_set": "visits saved vs full set"}
# Recall and precision of the planted mismatches / near-copies among each end's candidates.
CANDIDATE_MEASURES = ("ill_recall", "ill_precision", "redundant_recall", "redundant_precision")
QUALITY_COLUMNS = ("epoch", *CANDIDATE_MEASURES, "churn_jaccard")


# Student's t, two-sided 5%: the critical |t| for 1..10 degrees of freedom (any t table).
T_CRIT_05 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def paired(deltas: list[float]) -> dict[str, Any]:
    """Mean, std, t, the 95% t half-width of the mean and the 5% two-sided verdict of per-seed
    differences (None below n = 2; beyond 10 degrees of freedom the 10-df value is used, which
    only makes it stricter)."""
    stat = mean_std(deltas)
    n, std = stat["n"], stat["std"]
    if n < 2:
        return {**stat, "t": None, "half_width_95": None, "significant": None}
    crit = T_CRIT_05[min(n - 1, 10) - 1]
    if std == 0:
        t = 0.0 if stat["mean"] == 0 else float("inf")
    else:
        t = stat["mean"] / (std / n ** 0.5)
    return {**stat, "t": t, "half_width_95": crit * std / n ** 0.5,
            "significant": abs(t) > crit}


def mean_std(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) >= 2 else None,
            "n": len(values), "values": values}


def fmt_stat(stat: dict[str, Any], key: str) -> str:
    mean, std = stat["mean"], stat["std"]
    if mean is None:
        return "-"
    if key in ("realised_pruned_share", "visits_saved_vs_full_set"):
        text, tail = f"{mean:.1%}", (f" ± {std * 100:.1f}" if std is not None else "")
    elif key in ("wall_seconds", "num_samples", "epoch"):
        text, tail = f"{mean:.0f}", (f" ± {std:.0f}" if std is not None else "")
    else:
        text, tail = f"{mean:.4f}", (f" ± {std:.4f}" if std is not None else "")
    return text + tail


def column_value(result: dict[str, Any], col: str) -> float | None:
    """A run's number for a table column: a summary key, or "visits_saved_vs_full_set", the
    share of the full training set's sample-visits (same epochs) the run did not make: its
    pruned share where it trained on the full set, and for a run on a subset (the coreset
    retraining) 1 - (1 - pruned) * subset size / full size."""
    summary = result["summary"]
    if col != "visits_saved_vs_full_set":
        return None if summary.get(col) is None else float(summary[col])
    full = (result.get("derived") or {}).get("num_source_samples", summary["num_samples"])
    trained = (1.0 - float(summary["realised_pruned_share"])) * summary["num_samples"]
    return 1.0 - trained / full


def cells(suite: Suite, pairs: list) -> list[dict[str, Any]]:
    """One entry per cell: its coordinates, seeds, failures and mean/std per column."""
    grouped: dict[tuple, list] = {}
    for spec, result in pairs:
        grouped.setdefault(tuple(spec.cell.items()), []).append((spec, result))
    out = []
    for key, members in grouped.items():
        ok = [(s, r) for s, r in members if r and r.get("status") == "ok"]
        failed = [r for _, r in members if r and r.get("status") != "ok"]
        by_seed = {col: {s.seed: value for s, r in ok
                         if (value := column_value(r, col)) is not None}
                   for col in dict.fromkeys((suite.metric, *suite.columns))}
        stats = {col: mean_std(list(by_seed[col].values())) for col in suite.columns}
        out.append({"cell": dict(key), "seeds": sorted(s.seed for s, _ in members),
                    "by_seed": by_seed,
                    "ok": len(ok), "failed": len(failed),
                    "missing": sum(1 for _, r in members if r is None),
                    "error": failed[0].get("error") if failed else None, "stats": stats})
    return out


def compare(suite: Suite, rows: list[dict[str, Any]],
            reference: tuple[str, str] | None = None) -> None:
    """Add 'vs_reference' to each row: headline difference to the reference row (the suite's,
    or `reference` = (key, value)), paired by seed on the headline ('paired') and on the
    secondary metric ('secondary')."""
    reference = reference or suite.reference
    if reference is None:
        return
    key, value = reference
    index = {tuple(sorted(r["cell"].items())): r for r in rows}
    for row in rows:
        ref = index.get(tuple(sorted({**row["cell"], key: value}.items())))
        a = row["stats"][suite.metric]
        if ref is None or ref is row or a["mean"] is None or ref["stats"][suite.metric]["mean"] is None:
            row["vs_reference"] = None
            continue
        b = ref["stats"][suite.metric]
        delta = a["mean"] - b["mean"]
        beyond = None if a["std"] is None or b["std"] is None else abs(delta) > a["std"] + b["std"]
        row["vs_reference"] = {"delta": delta, "beyond": beyond,
                               "seeds": sorted(set(row["by_seed"][suite.metric])
                                               & set(ref["by_seed"][suite.metric])),
                               "paired": _paired_by_seed(row, ref, suite.metric)}
        if suite.secondary:
            row["vs_reference"]["secondary"] = _paired_by_seed(row, ref, suite.secondary)


def _paired_by_seed(row: dict[str, Any], ref: dict[str, Any], col: str) -> dict[str, Any]:
    mine, theirs = row["by_seed"][col], ref["by_seed"][col]
    return paired([mine[i] - theirs[i] for i in sorted(set(mine) & set(theirs))])


def quality_rows(pairs: list) -> list[dict[str, Any]]:
    """Suite 5: per cell and preparation index k (1st, 2nd, ...), mean/std over seeds."""
    grouped: dict[tuple, dict[int, list[dict]]] = {}
    for spec, result in pairs:
        if not result or result.get("status") != "ok":
            continue
        for row in preparation_rows(result):
            grouped.setdefault(tuple(spec.cell.items()), {}).setdefault(row["k"], []).append(row)
    out = []
    for cell, by_k in grouped.items():
        for k, rows in sorted(by_k.items()):
            out.append({"cell": dict(cell), "preparation": k, "stats": {
                col: mean_std([float(r[col]) for r in rows if r.get(col) is not None])
                for col in QUALITY_COLUMNS}})
    return out


def _markdown(headers: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body]) + "\n"


def _unpaired(vs: dict[str, Any]) -> str:
    verdict = "n<2" if vs["beyond"] is None else "beyond" if vs["beyond"] else "within"
    return f"{vs['delta']:+.4f} ({verdict})"


def _paired(p: dict[str, Any]) -> str:
    if p["mean"] is None:
        return "-"
    if p["significant"] is None:
        return f"{p['mean']:+.4f} (n<2)"
    return (f"{p['mean']:+.4f} ± {p['std']:.4f}, t {p['t']:+.1f} "
            f"({'p<.05' if p['significant'] else 'n.s.'}, n {p['n']})")


def reference_of(name: str, against: str | None) -> tuple[str, str] | None:
    """The (key, value) rows of suite `name` are held against: its own reference, or the cell
    whose reference key holds `against` (ValueError naming the choices if none does)."""
    suite = SUITES[name]
    if against is None:
        return suite.reference
    if suite.reference is None:
        raise ValueError(f"suite {name!r} has no reference row to replace with --against")
    key = suite.reference[0]
    values = sorted({s.cell[key] for s in suite_runs(name, (0,)) if key in s.cell})
    if against not in values:
        raise ValueError(f"no {key} of suite {name!r} is {against!r}; --against takes one of "
                         f"{values}")
    return key, against


def suite_table(name: str, root: str | Path, seeds=(0, 1, 2), *, miniature: bool = False,
                where: list[str] | None = None, against: str | None = None,
                preparations: bool = False) -> tuple[str, dict[str, Any]]:
    """(markdown, numbers) of suite `name` from the result JSONs under `root`; `where`
    (KEY=VALUE items, suites.match_cells) keeps only the matching cells; `against` names the
    row every row is paired with (default the suite's reference, SCAN); `preparations` adds
    the candidates' recall / precision per preparation epoch (always there for suite 5)."""
    suite = SUITES[name]
    reference = reference_of(name, against)
    specs = suite_runs(name, tuple(seeds), miniature=miniature)
    pairs = results_of(match_cells(specs, where) if where else specs, root)
    rows = cells(suite, pairs)
    compare(suite, rows, reference)
    coords = list(dict.fromkeys(k for r in rows for k in r["cell"]))
    headers = coords + [LABELS.get(c, c) for c in suite.columns] + ["seeds ok"]
    if reference:
        headers += [f"{LABELS[suite.metric]} vs {reference[1]}",
                    "paired by seed (t-test)"]
        if suite.secondary:
            headers.append(f"{LABELS[suite.secondary]}, paired by seed")
    body = []
    for r in rows:
        line = [r["cell"].get(c, "") for c in coords]
        line += [fmt_stat(r["stats"][c], c) for c in suite.columns]
        status = f"{r['ok']}/{len(r['seeds'])}"
        if r["failed"]:
            status += f" (failed: {str(r['error'])[:80]})"
        line.append(status)
        if reference:
            vs = r.get("vs_reference")
            line += ["-", "-"] if vs is None else [_unpaired(vs), _paired(vs["paired"])]
            if suite.secondary:
                line.append("-" if vs is None else _paired(vs["secondary"]))
        body.append(line)
    text = f"### {suite.title}\n\n" + _markdown(headers, body)
    numbers: dict[str, Any] = {"suite": name, "seeds": list(seeds), "miniature": miniature,
                               "where": list(where or []), "against": against, "rows": rows}
    if name == "quality" or preparations:
        qrows = quality_rows(pairs)
        numbers["quality"] = qrows
        qcoords = list(dict.fromkeys(k for r in qrows for k in r["cell"]))
        text += "\nCandidate quality per preparation epoch (k-th preparation of the run):\n\n"
        text += _markdown(qcoords + ["k"] + [LABELS[c] for c in QUALITY_COLUMNS],
                          [[r["cell"].get(c, "") for c in qcoords] + [str(r["preparation"])]
                           + [fmt_stat(r["stats"][c], c) for c in QUALITY_COLUMNS]
                           for r in qrows])
    return text, numbers


def write_table(name: str, root: str | Path, seeds=(0, 1, 2), *, miniature: bool = False,
                where: list[str] | None = None, against: str | None = None,
                preparations: bool = False) -> tuple[Path, str]:
    """tables/<suite>[-mini][-where][-vs-<against>].md and .json under root; returns
    (markdown path, markdown). A `where` selection or another reference row gets its own
    files, so the whole suite's stay."""
    text, numbers = suite_table(name, root, seeds, miniature=miniature, where=where,
                                against=against, preparations=preparations)
    folder = Path(root) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    stem = name + ("-mini" if miniature else "") + ("-where" if where else "")
    if against is not None:
        stem += "-vs-" + "".join(c if c.isalnum() else "-" for c in against).strip("-")
    (folder / f"{stem}.md").write_text(text)
    (folder / f"{stem}.json").write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    return folder / f"{stem}.md", text
