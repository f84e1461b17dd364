"""record() of two checkouts of scan_core, side by side in one process (issue 15: the cost of
the coverage check): the scan_core in OLD_REPO (e.g. a checkout of main) against this
checkout's, on bench_bookkeeping.py's preparation-epoch workload, the two called alternately
on every batch (the order swaps every batch), then each one's end_epoch(). No released code.

    .venv/bin/python benchmarks/bench_compare_record.py /tmp/base --sizes 10000000

Prints one JSON line per size: per-call median, mean and 95%-trimmed mean of each side and
their ratios (new / old), and each side's end_epoch() seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's scan_core
from bench_bookkeeping import batches, loss_pool  # noqa: E402


def import_other_scan_core(repo: str):
    """The scan_core package of another checkout, imported beside this one: its modules are
    loaded under their own names while this checkout's are set aside, then both are kept."""
    mine = {k: v for k, v in sys.modules.items() if k == "scan_core" or k.startswith("scan_core.")}
    for k in mine:
        del sys.modules[k]
    sys.path.insert(0, repo)
    try:
        import scan_core as other
    finally:
        sys.path.remove(repo)
        for k in [k for k in sys.modules if k == "scan_core" or k.startswith("scan_core.")]:
            del sys.modules[k]
        sys.modules.update(mine)
    if os.path.dirname(os.path.dirname(other.__file__)) != os.path.abspath(repo):
        raise RuntimeError(f"imported {other.__file__}, not the scan_core of {repo}")
    return other


def compare_record(old_repo: str, n: int, batch_size: int, seed: int,
                   coverage: str = "warn") -> dict:
    """record() of the scan_core in `old_repo` and of this checkout, on the same shuffled
    preparation epoch (the (a) workload), the two called alternately on every batch (the order
    swaps every batch), in one process. Then each one's end_epoch()."""
    import scan_core as new

    old = import_other_scan_core(old_repo)
    order = np.random.default_rng(seed).permutation(n)
    pool = loss_pool(batch_size, seed)
    pruners = {}
    for name, sc in (("old", old), ("new", new)):
        warm = sc.ScanPruner(4096, 2, sc.ScanConfig(warmup_epochs=0, seed=seed))
        warm.plan_epoch(0)
        for ids, losses in batches(np.arange(4096), pool[:4]):
            warm.record(ids, losses)
        warm.end_epoch()
        kw = {"coverage": coverage} if name == "new" else {}
        pruners[name] = sc.ScanPruner(n, 2, sc.ScanConfig(warmup_epochs=0, seed=seed), **kw)
        assert pruners[name].plan_epoch(0).phase == "prepare"
    times: dict[str, list[int]] = {"old": [], "new": []}
    clock = time.perf_counter_ns
    gc.collect()
    for b, (ids, losses) in enumerate(batches(order, pool)):
        for name in (("old", "new") if b % 2 == 0 else ("new", "old")):
            t0 = clock()
            pruners[name].record(ids, losses)
            times[name].append(clock() - t0)
    out: dict = {"n": n, "batches": len(times["old"]), "old_repo": old_repo, "coverage": coverage,
                 "old_file": old.__file__, "new_file": new.__file__}
    # Preemptions by other jobs on a shared box land on either side alike; a trimmed mean
    # (both sides cut at the same rank) keeps the work and drops them.
    for name, t in times.items():
        t_sorted = sorted(t)
        out[name + "_median_us"] = statistics.median(t) / 1e3
        out[name + "_mean_us"] = statistics.fmean(t) / 1e3
        out[name + "_trimmed95_us"] = statistics.fmean(t_sorted[:int(len(t) * 0.95)]) / 1e3
        t0 = time.perf_counter()
        summary = pruners[name].end_epoch()
        out[name + "_end_epoch_s"] = time.perf_counter() - t0
        out[name + "_candidates"] = summary.num_candidates
    for stat in ("median", "mean", "trimmed95"):
        out[stat + "_ratio"] = out[f"new_{stat}_us"] / out[f"old_{stat}_us"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old_repo", metavar="OLD_REPO",
                        help="a checkout whose scan_core is timed against this one's")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coverage", default="warn", choices=("warn", "error", "off"),
                        help="this checkout's ScanPruner(coverage=...)")
    args = parser.parse_args(argv)
    for n in args.sizes:
        print(json.dumps(compare_record(args.old_repo, n, args.batch_size, args.seed,
                                        args.coverage)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
