"""ScanPruner's own state at N = 1e9 (scope="batch", no loss history): a real run, not a projection.

Epoch 0 is a preparation epoch (ScanConfig(warmup_epochs=0)): every id 0..N-1 is recorded once,
in consecutive batches of B with two views of synthetic float32 losses cycled from a pool of a
few hundred arrays (so generating the stream costs next to nothing). Then `end_epoch()` and
`plan_epoch(1)`, the first mutation epoch, WITHOUT materialising `plan.kept_ids`: the ids an
epoch hands out belong to the data loader, not to the pruner's state, and `iter_kept_ids()`
serves them in chunks (`--iterate-kept` times that too).

Reported: peak RSS - RSS after imports, Numba warm-up and the loss pool (the kernel's VmHWM,
reset by /proc/self/clear_refs); wall time of the preparation epoch; per-batch record time;
end_epoch and mutation planning time; |D'| and the kept count.

    .venv/bin/python benchmarks/bench_billion.py --num-samples 100000000   # try 1e8 first
    .venv/bin/python benchmarks/bench_billion.py                           # 1e9
    .venv/bin/python benchmarks/bench_billion.py --iterate-kept --write-docs

Expected cost at 1e9 on 2 cores: a few minutes (about 977k record calls) and < 1 GB.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's scan_core
from bench_bookkeeping import loss_pool, warm_up_numba  # noqa: E402
from bench_env import (bench_parser, command_and_machine, machine, proc_status_kib,  # noqa: E402
                       publish, reset_peak_rss)

from scan_core import ScanConfig, ScanPruner  # noqa: E402

BUDGET_BYTES = 10**9
SAMPLE_EVERY = 16  # batches between two individually timed record() calls


def run(num_samples: int, batch_size: int, pool_size: int, seed: int, iterate_kept: bool,
        chunk_size: int) -> dict:
    warm_up_numba(seed)
    pool = loss_pool(batch_size, seed, pool_size)
    gc.collect()
    reset_ok = reset_peak_rss()
    rss0 = proc_status_kib("VmRSS")
    out: dict = {"n": num_samples, "batch_size": batch_size, "hwm_reset": reset_ok,
                 "rss_after_imports_mib": rss0 / 1024}

    def grown() -> int:
        return (proc_status_kib("VmHWM") - rss0) * 1024

    pruner = ScanPruner(num_samples, 2, ScanConfig(warmup_epochs=0, seed=seed))
    plan = pruner.plan_epoch(0)
    assert plan.phase == "prepare"
    num_batches = -(-num_samples // batch_size)
    sampled: list[int] = []
    clock = time.perf_counter_ns
    t_start = time.perf_counter()
    next_report = 0.1
    for b in range(num_batches):
        start = b * batch_size
        ids = np.arange(start, min(start + batch_size, num_samples), dtype=np.int64)
        losses = pool[b % pool_size]
        if len(ids) < batch_size:
            losses = losses[:, :len(ids)]
        if b % SAMPLE_EVERY == 0:
            t0 = clock()
            pruner.record(ids, losses)
            sampled.append(clock() - t0)
        else:
            pruner.record(ids, losses)
        if (b + 1) / num_batches >= next_report:
            elapsed = time.perf_counter() - t_start
            print(f"  {b + 1}/{num_batches} batches, {elapsed:.0f} s, "
                  f"{(b + 1) * batch_size / elapsed / 1e6:.2f} M samples/s", file=sys.stderr,
                  flush=True)
            next_report += 0.1
    out["prep_epoch_s"] = time.perf_counter() - t_start
    out["num_batches"] = num_batches
    out["record_us_median"] = statistics.median(sampled) / 1e3
    out["record_us_mean"] = statistics.fmean(sampled) / 1e3
    out["epoch_us_per_batch"] = out["prep_epoch_s"] / num_batches * 1e6
    out["peak_after_records"] = grown()

    t0 = time.perf_counter()
    summary = pruner.end_epoch()
    out["end_epoch_s"] = time.perf_counter() - t0
    out["num_candidates"] = summary.num_candidates
    out["peak_after_end_epoch"] = grown()

    t0 = time.perf_counter()
    plan = pruner.plan_epoch(1)
    out["plan_s"] = time.perf_counter() - t0
    assert plan.phase == "mutate"
    out["rho_cur"] = plan.rho_cur
    out["num_kept"] = plan.num_kept
    out["peak_state"] = grown()
    out["rss_end_state"] = (proc_status_kib("VmRSS") - rss0) * 1024

    if iterate_kept:
        t0 = time.perf_counter()
        count = 0
        for chunk in plan.iter_kept_ids(chunk_size):
            count += len(chunk)
        out["iterate_s"] = time.perf_counter() - t0
        assert count == plan.num_kept
        out["peak_with_iteration"] = grown()
    out["bitmaps_bytes"] = 3 * ((num_samples + 7) // 8)
    out["seen_bytes"] = (num_samples + 7) // 8  # the coverage check's seen bitmap (issue 15)
    return out


def report(r: dict, command: str, info: dict[str, str]) -> str:
    mib = 2**20
    lines = [
        *command_and_machine(command, info),
        "",
        "| quantity | measured |",
        "|---|---:|",
        f"| N | {r['n']:,} |",
        f"| record() calls (B = {r['batch_size']}) | {r['num_batches']:,} |",
        f"| preparation epoch, wall | {r['prep_epoch_s']:.1f} s |",
        f"| per batch, whole epoch incl. id generation | {r['epoch_us_per_batch']:.1f} us |",
        f"| record(), median (every {SAMPLE_EVERY}th call timed) | {r['record_us_median']:.1f} us |",
        f"| end_epoch() | {r['end_epoch_s']:.2f} s |",
        f"| plan_epoch(1), mutation, no kept_ids | {r['plan_s']:.2f} s |",
        f"| candidates, \\|D'\\| | {r['num_candidates']:,} ({r['num_candidates'] / r['n']:.3f} N) |",
        f"| kept in epoch 1 (rho_cur = {r['rho_cur']}) | {r['num_kept']:,} |",
        f"| peak RSS growth after the records | {r['peak_after_records'] / mib:.0f} MiB |",
        f"| peak RSS growth after end_epoch() | {r['peak_after_end_epoch'] / mib:.0f} MiB |",
        f"| **peak RSS growth after plan_epoch(1)** | **{r['peak_state'] / mib:.0f} MiB "
        f"({r['peak_state'] / r['n']:.3f} bytes/sample)** |",
        f"| RSS growth held after plan_epoch(1) | {r['rss_end_state'] / mib:.0f} MiB |",
        f"| the coverage check's seen bitmap, one of them (N / 8 bytes) | "
        f"{r['seen_bytes'] / mib:.0f} MiB |",
        f"| three N-bit bitmaps (red, ill, drop), for scale | "
        f"{r['bitmaps_bytes'] / mib:.0f} MiB |",
    ]
    if "iterate_s" in r:
        lines += [
            f"| iterate plan.iter_kept_ids() | {r['iterate_s']:.1f} s "
            f"({r['num_kept'] / r['iterate_s'] / 1e6:.0f} M ids/s) |",
            f"| peak RSS growth after the iteration | {r['peak_with_iteration'] / mib:.0f} MiB |",
        ]
    ok = r["peak_state"] <= BUDGET_BYTES
    lines += ["", f"Budget 1 GB (10^9 bytes) for the pruner's state: "
                  f"{'met' if ok else 'NOT met'} ({r['peak_state'] / 1e9:.3f} GB at peak)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, num_samples=1_000_000_000, batch_size=1024)
    parser.add_argument("--pool", type=int, default=256, help="distinct synthetic loss arrays")
    parser.add_argument("--iterate-kept", action="store_true",
                        help="also iterate plan.iter_kept_ids() and time it")
    parser.add_argument("--chunk-size", type=int, default=1 << 20)
    args = parser.parse_args(argv)
    info = machine()
    result = run(args.num_samples, args.batch_size, args.pool, args.seed, args.iterate_kept,
                 args.chunk_size)
    command = ".venv/bin/python benchmarks/bench_billion.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    publish(report(result, command.strip(), info), "bench_billion",
            write_docs_too=args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
