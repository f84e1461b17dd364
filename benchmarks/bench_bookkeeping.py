"""scan_core's candidate bookkeeping against the released SCAN code's, side by side (issue 2, 6).

For each dataset size N, both implementations are fed the same preparation epoch (a random
permutation of 0..N-1 in batches of B, two views of synthetic float32 losses cycled from a pool)
and then plan the first mutation epoch (rho_cur = 0.25, T_cos = 3). Measured in one run:

  (a) time per recorded batch: every batch of the epoch, the two implementations timed
      alternately on the same batch (the order swaps every batch); median and mean.
  (b) time to plan a mutation epoch: the released code's drop draw + kept-index rebuild, and
      ScanPruner.plan_epoch(1) with and without materialising `plan.kept_ids`; median of
      --repeat runs, alternated.
  (c) peak memory per sample of the bookkeeping: each (implementation, N) in a fresh
      subprocess; (peak RSS after the full preparation epoch and the mutation plan - RSS after
      imports, warm-up and the input arrays) / N. The peak is the kernel's VmHWM, reset by
      /proc/self/clear_refs after the baseline reading.

Numba compile time is excluded (a tiny pruner runs a whole cycle first). ScanPruner uses the
default ScanConfig (scope="batch", rho 0.30 at each end) with warmup_epochs=0, so epoch 0 is a
preparation epoch.

    .venv/bin/python benchmarks/bench_bookkeeping.py                      # 1e5, 1e6, 1e7
    .venv/bin/python benchmarks/bench_bookkeeping.py --sizes 100000 --repeat 1   # quick look
    .venv/bin/python benchmarks/bench_bookkeeping.py --write-docs         # also update docs/

Expected cost at the default sizes on 2 cores: a few minutes, about 2.5 GB of memory at peak
(the released code's sets at N = 1e7).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's scan_core
from bench_env import (command_and_machine, machine, proc_status_kib, publish,  # noqa: E402
                       reset_peak_rss)
from released_baseline import ReleasedBookkeeping  # noqa: E402

from scan_core import ScanConfig, ScanPruner  # noqa: E402

POOL_SIZE = 256   # distinct loss arrays; enough that no sort's branches are learnt by heart
FIRST_MUTATION_RHO = 0.25  # rho_cur of the first mutation epoch with T_cos = 3
TARGETS = {"per batch": 10.0, "mutation plan": 100.0, "memory per sample": 100.0}


def loss_pool(batch_size: int, seed: int, size: int = POOL_SIZE) -> np.ndarray:
    """(size, 2, B) float32 synthetic per-view losses, independent uniform in [0, 4)."""
    return np.random.default_rng(seed).random((size, 2, batch_size), dtype=np.float32) * 4


def batches(order: np.ndarray, pool: np.ndarray):
    """(ids, losses) of one epoch over `order`, losses cycled from `pool`."""
    batch_size = pool.shape[2]
    for b, start in enumerate(range(0, len(order), batch_size)):
        ids = order[start:start + batch_size]
        yield ids, pool[b % len(pool)][:, :len(ids)]


def scan_config(seed: int) -> ScanConfig:
    return ScanConfig(warmup_epochs=0, seed=seed)


def warm_up_numba(seed: int) -> None:
    """Run every kernel once on a tiny pruner so compile / cache-load time is not measured."""
    n = 4096
    pruner = ScanPruner(n, 2, scan_config(seed))
    pruner.plan_epoch(0)
    for ids, losses in batches(np.arange(n), loss_pool(1024, seed, 4)):
        pruner.record(ids, losses)
    pruner.end_epoch()
    plan = pruner.plan_epoch(1)
    _ = plan.kept_ids
    ReleasedBookkeeping(n).record(np.arange(1024), loss_pool(1024, seed, 1)[0])


# -- (a) and (b): time, side by side in this process ---------------------------------------------
def time_side_by_side(n: int, batch_size: int, repeat: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    pool = loss_pool(batch_size, seed)
    base = ReleasedBookkeeping(n, seed=seed)
    pruner = ScanPruner(n, 2, scan_config(seed))
    assert pruner.plan_epoch(0).phase == "prepare"
    t_base, t_scan = [], []
    clock = time.perf_counter_ns
    for b, (ids, losses) in enumerate(batches(order, pool)):
        if b % 2 == 0:
            t0 = clock(); base.record(ids, losses); t1 = clock()
            pruner.record(ids, losses); t2 = clock()
            t_base.append(t1 - t0); t_scan.append(t2 - t1)
        else:
            t0 = clock(); pruner.record(ids, losses); t1 = clock()
            base.record(ids, losses); t2 = clock()
            t_scan.append(t1 - t0); t_base.append(t2 - t1)
    base.end_preparation()
    pruner.end_epoch()
    state = pruner.state_dict()
    m_base, m_plan, m_ids = [], [], []
    kept_base = kept_scan = 0
    for r in range(repeat):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            gc.collect()
            if which == 0:
                t0 = time.perf_counter()
                kept, index = base.plan_mutation(FIRST_MUTATION_RHO)
                m_base.append(time.perf_counter() - t0)
                kept_base = len(kept)
                del kept, index
            else:
                fresh = ScanPruner.from_state_dict(state)
                t0 = time.perf_counter()
                plan = fresh.plan_epoch(1)
                t1 = time.perf_counter()
                kept_ids = plan.kept_ids
                t2 = time.perf_counter()
                assert plan.phase == "mutate" and plan.rho_cur == FIRST_MUTATION_RHO
                assert len(kept_ids) == plan.num_kept
                m_plan.append(t1 - t0); m_ids.append(t2 - t0)
                kept_scan = plan.num_kept
                del fresh, plan, kept_ids
    return {
        "n": n, "batches": len(t_base),
        "base_batch_us_median": statistics.median(t_base) / 1e3,
        "base_batch_us_mean": statistics.fmean(t_base) / 1e3,
        "scan_batch_us_median": statistics.median(t_scan) / 1e3,
        "scan_batch_us_mean": statistics.fmean(t_scan) / 1e3,
        "base_mutation_s": statistics.median(m_base),
        "scan_mutation_s": statistics.median(m_plan),
        "scan_mutation_with_ids_s": statistics.median(m_ids),
        "base_candidates": base.num_candidates, "scan_candidates": pruner.num_candidates,
        "base_kept": kept_base, "scan_kept": kept_scan,
    }


# -- (c): memory, one fresh subprocess per (implementation, N) -------------------------------------
def memory_child(impl: str, n: int, batch_size: int, seed: int) -> dict:
    warm_up_numba(seed)
    order = np.random.default_rng(seed).permutation(n)
    pool = loss_pool(batch_size, seed)
    gc.collect()
    reset_ok = reset_peak_rss()
    rss0 = proc_status_kib("VmRSS")
    out: dict = {"impl": impl, "n": n, "hwm_reset": reset_ok}
    if impl == "baseline":
        base = ReleasedBookkeeping(n, seed=seed)
        for ids, losses in batches(order, pool):
            base.record(ids, losses)
        base.end_preparation()
        kept, index = base.plan_mutation(FIRST_MUTATION_RHO)
        peak = proc_status_kib("VmHWM")
        out["state_bytes_per_sample"] = (peak - rss0) * 1024 / n
        out["with_ids_bytes_per_sample"] = out["state_bytes_per_sample"]
        out["num_kept"] = len(kept)
    else:
        pruner = ScanPruner(n, 2, scan_config(seed))
        pruner.plan_epoch(0)
        for ids, losses in batches(order, pool):
            pruner.record(ids, losses)
        pruner.end_epoch()
        plan = pruner.plan_epoch(1)
        out["state_bytes_per_sample"] = (proc_status_kib("VmHWM") - rss0) * 1024 / n
        kept_ids = plan.kept_ids
        out["with_ids_bytes_per_sample"] = (proc_status_kib("VmHWM") - rss0) * 1024 / n
        out["num_kept"] = len(kept_ids)
    out["rss_after_imports_mib"] = rss0 / 1024
    return out


def run_memory_child(impl: str, n: int, batch_size: int, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--sizes", str(n),
           "--batch-size", str(batch_size), "--seed", str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {impl} N={n} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- report --------------------------------------------------------------------------------------
def fmt_n(n: int) -> str:
    exp = int(round(math.log10(n)))
    return f"1e{exp}" if 10**exp == n else str(n)


def verdict(ratio: float, target: float, lower_bound: bool = False) -> str:
    sign = ">= " if lower_bound else ""
    return (f"{sign}{ratio:.1f}x ({'met' if ratio >= target else 'NOT met'}, "
            f"target {target:.0f}x)")


def memory_ratio(row: dict, key: str) -> tuple[float, bool]:
    """released / scan_core bytes per sample. RSS moves in 4 KiB pages: a growth below one page
    reads as 0, so the denominator is floored at one page and the ratio is a lower bound."""
    page = 4096 / row["n"]
    if row[key] < page:
        return row["mem_base"] / page, True
    return row["mem_base"] / row[key], False


def fmt_ratio(value_bound: tuple[float, bool]) -> str:
    value, bound = value_bound
    return f"{'>= ' if bound else ''}{value:.0f}x"


def report(rows: list[dict], command: str, info: dict[str, str]) -> str:
    lines = [
        *command_and_machine(command, info),
        "",
        "| N | batches | released: us/batch (median) | scan_core: us/batch (median) | "
        "released: mutation plan (s) | scan_core: plan_epoch (s) | scan_core: + kept_ids (s) | "
        "released: bytes/sample | scan_core: bytes/sample (state) | scan_core: bytes/sample "
        "(+ kept_ids) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {fmt_n(r['n'])} | {r['batches']} | {r['base_batch_us_median']:.0f} | "
            f"{r['scan_batch_us_median']:.0f} | {r['base_mutation_s']:.3f} | "
            f"{r['scan_mutation_s']:.4f} | {r['scan_mutation_with_ids_s']:.4f} | "
            f"{r['mem_base']:.1f} | {r['mem_scan']:.2f} | {r['mem_scan_ids']:.2f} |")
    lines += ["", "Speed-ups (released / scan_core), same run:", "",
              "| N | per batch | mutation plan (no kept_ids) | mutation plan (+ kept_ids) | "
              "memory (state) | memory (+ kept_ids) |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {fmt_n(r['n'])} | {r['base_batch_us_median'] / r['scan_batch_us_median']:.1f}x | "
            f"{r['base_mutation_s'] / r['scan_mutation_s']:.0f}x | "
            f"{r['base_mutation_s'] / r['scan_mutation_with_ids_s']:.0f}x | "
            f"{fmt_ratio(memory_ratio(r, 'mem_scan'))} | "
            f"{fmt_ratio(memory_ratio(r, 'mem_scan_ids'))} |")
    big = rows[-1]
    target = TARGETS["memory per sample"]
    mem_state = (memory_ratio(big, "mem_scan")[0], target, memory_ratio(big, "mem_scan")[1])
    mem_ids = (memory_ratio(big, "mem_scan_ids")[0], target, memory_ratio(big, "mem_scan_ids")[1])
    scan_us = [r["scan_batch_us_median"] for r in rows]
    base_us = ", ".join(f"{r['base_batch_us_median']:.0f}" for r in rows)
    lines += [
        "",
        f"At N = {fmt_n(big['n'])}: per batch "
        f"{verdict(big['base_batch_us_median'] / big['scan_batch_us_median'], TARGETS['per batch'])}; "
        f"mutation plan {verdict(big['base_mutation_s'] / big['scan_mutation_s'], TARGETS['mutation plan'])}"
        f" without kept_ids, "
        f"{verdict(big['base_mutation_s'] / big['scan_mutation_with_ids_s'], TARGETS['mutation plan'])}"
        f" with them; memory per sample "
        f"{verdict(*mem_state)} for the state, {verdict(*mem_ids)} with "
        "kept_ids materialised.",
        "",
        f"scan_core's record() median over N = {', '.join(fmt_n(r['n']) for r in rows)}: "
        f"{', '.join(f'{u:.0f}' for u in scan_us)} us (max / min = "
        f"{max(scan_us) / min(scan_us):.2f}); released code: "
        f"{base_us} us.",
        "",
        "Mean us/batch (released / scan_core): " + "; ".join(
            f"{fmt_n(r['n'])}: {r['base_batch_us_mean']:.0f} / {r['scan_batch_us_mean']:.0f}"
            for r in rows) + ".",
        "|D'| after the preparation epoch (released / scan_core): " + "; ".join(
            f"{fmt_n(r['n'])}: {r['base_candidates']} / {r['scan_candidates']}" for r in rows) + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="mutation plans timed per N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the tables into docs/benchmarks.md")
    parser.add_argument("--child", choices=("baseline", "scan"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(memory_child(args.child, args.sizes[0], args.batch_size, args.seed)))
        return 0
    command = "benchmarks/bench_bookkeeping.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    info = machine()
    warm_up_numba(args.seed)
    rows = []
    for n in args.sizes:
        row = time_side_by_side(n, args.batch_size, args.repeat, args.seed)
        gc.collect()
        mem_base = run_memory_child("baseline", n, args.batch_size, args.seed)
        mem_scan = run_memory_child("scan", n, args.batch_size, args.seed)
        row.update(mem_base=mem_base["state_bytes_per_sample"],
                   mem_scan=mem_scan["state_bytes_per_sample"],
                   mem_scan_ids=mem_scan["with_ids_bytes_per_sample"],
                   hwm_reset=mem_base["hwm_reset"] and mem_scan["hwm_reset"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    publish(report(rows, ".venv/bin/python " + command.strip(), info), "bench_bookkeeping",
            write_docs_too=args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
