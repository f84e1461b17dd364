"""The loss history at scale: disk and RAM per sample, measured at two N and extrapolated.

For each N: an EpochLosses(2 views, N) filled with losses (gamma(2, 1) by default, or values
resampled from a real run's history with --values-from STORE, so that the compression ratio is
a real one), then, as a pruner's end_epoch does, `LossStore.write_history` for `--epochs`
preparation epochs (float16), then `history.store_features` over them, once with one feature
(what a rule needs) and once with all four; and retire_share's step on the last epoch's
losses (30% of N ill-matched, a 10% cap), chunked and its whole-array twin.

Measured per phase: peak RSS growth over the RSS before it (VmHWM reset by /proc/self/
clear_refs) and wall time; disk: the bytes of each history/epoch_* folder. The EpochLosses
buffer itself (12 bytes per sample at 2 views) is the pruner's while it collects, reported
apart. The extrapolation to 1e9 fits a + b * N to the two measured points (no other model).

    .venv/bin/python benchmarks/bench_history.py --sizes 1000000 10000000
    .venv/bin/python benchmarks/bench_history.py --values-from run/scan.zarr --write-docs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's scan_core
from bench_env import machine, proc_status_kib, reset_peak_rss, write_docs  # noqa: E402

from scan_core import LossStore, ScanConfig  # noqa: E402
from scan_core.epoch_losses import EpochLosses  # noqa: E402
from scan_core.history import retire_more, store_features  # noqa: E402
from scan_core.retire import retire_more_chunked  # noqa: E402

TARGET_N = 10**9
BEGIN, END = "<!-- bench_history:begin -->", "<!-- bench_history:end -->"


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def measure(fn) -> tuple[float, int, object]:
    """(seconds, peak RSS growth in bytes, result) of fn()."""
    gc.collect()
    reset_peak_rss()
    rss0 = proc_status_kib("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return seconds, (proc_status_kib("VmHWM") - rss0) * 1024, out


def value_source(path: str | None, seed: int):
    rng = np.random.default_rng(seed)
    if path is None:
        return lambda shape: rng.gamma(2.0, 1.0, shape).astype(np.float32)
    store = LossStore.open(path, LossStore.read_meta(path), writable=False)
    pool = np.asarray(store.read_history(store.history_epochs()[-1]), np.float32).ravel()
    pool = pool[np.isfinite(pool)]
    return lambda shape: rng.choice(pool, size=shape).astype(np.float32)


def one_size(n: int, epochs: int, draw, root: str) -> dict:
    path = os.path.join(root, f"h{n}.zarr")
    meta = {"config": ScanConfig().to_dict(), "num_samples": n, "num_views": 2, "world_size": 1}
    store = LossStore.open(path, meta, writable=True)
    losses = EpochLosses(2, n)
    row: dict = {"n": n, "epoch_losses_bytes": losses.sum.nbytes + losses.count.nbytes}
    write_s, write_peak = 0.0, 0
    for e in range(epochs):
        for lo in range(0, n, 1 << 22):  # fill in slices: the fill is not what is measured
            hi = min(n, lo + (1 << 22))
            losses.sum[:, lo:hi] = draw((2, hi - lo)) * (1.0 - 0.1 * e)
        losses.count[:] = 1
        s, peak, _ = measure(lambda e=e: store.write_history(e, losses, "float16"))
        write_s, write_peak = write_s + s, max(write_peak, peak)
    # retire_share's step on the last epoch's losses: 30% of N ill-matched, a 10% cap
    ill = np.packbits(np.random.default_rng(n).random(n) < 0.3, bitorder="little")
    none = np.zeros_like(ill)
    for label, step in (("chunked", lambda: retire_more_chunked(losses.mean, n, ill, none,
                                                                 n // 10)),
                        ("twin", lambda: retire_more(losses.mean(), ill, none, n // 10))):
        s, peak, _ = measure(step)
        row[f"retire_{label}_seconds"], row[f"retire_{label}_peak_bytes"] = s, peak
    del losses
    disk = [folder_bytes(os.path.join(path, "history", f"epoch_{e:08d}")) for e in range(epochs)]
    row.update(write_seconds_per_epoch=write_s / epochs, write_peak_bytes=write_peak,
               disk_bytes_per_epoch=float(np.mean(disk)))
    for label, names in (("one", ("persist",)), ("all", ("last", "persist", "delta", "mean"))):
        s, peak, _ = measure(lambda names=names: store_features(store, names=names))
        row[f"read_{label}_seconds"], row[f"read_{label}_peak_bytes"] = s, peak
    store.close()
    shutil.rmtree(path)
    return row


def extrapolate(rows: list[dict], key: str) -> tuple[float, float, float]:
    """(fixed bytes, bytes per sample, value at TARGET_N) of a + b * N through two rows."""
    (n0, y0), (n1, y1) = [(r["n"], r[key]) for r in rows[:2]]
    slope = (y1 - y0) / (n1 - n0)
    fixed = y0 - slope * n0
    return fixed, slope, fixed + slope * TARGET_N


def table(rows: list[dict], epochs: int, args_line: str, values: str) -> str:
    mib = 2.0**20
    lines = [f"`{args_line}`, {epochs} preparation epochs of 2 views, float16, values: {values}.",
             "", "| N | disk / epoch | write peak | read 1 feature: peak, s | read 4: peak, s "
             "| retire step, chunked: peak, s | retire, whole-array twin: peak, s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['n']:.3g} | {r['disk_bytes_per_epoch'] / mib:.1f} MiB "
            f"({r['disk_bytes_per_epoch'] / r['n']:.2f} B/sample) | "
            f"{r['write_peak_bytes'] / mib:.1f} MiB | {r['read_one_peak_bytes'] / mib:.1f} MiB, "
            f"{r['read_one_seconds']:.2f} | {r['read_all_peak_bytes'] / mib:.1f} MiB, "
            f"{r['read_all_seconds']:.2f} | {r['retire_chunked_peak_bytes'] / mib:.1f} MiB, "
            f"{r['retire_chunked_seconds']:.2f} | {r['retire_twin_peak_bytes'] / mib:.1f} MiB, "
            f"{r['retire_twin_seconds']:.2f} |")
    lines += ["", "Fitted a + b N through the two sizes, at N = 1e9:", ""]
    for key, what in (("disk_bytes_per_epoch", "disk per preparation epoch"),
                      ("write_peak_bytes", "RAM peak of writing one epoch (beyond EpochLosses)"),
                      ("read_one_peak_bytes", "RAM peak of reading 1 feature"),
                      ("read_all_peak_bytes", "RAM peak of reading 4 features"),
                      ("retire_chunked_peak_bytes", "RAM peak of the retire step (chunked)"),
                      ("retire_twin_peak_bytes", "RAM peak of the retire step's whole-array "
                                                 "twin (what ran before)")):
        fixed, slope, at = extrapolate(rows, key)
        if slope < 0.5:  # bounded by the chunk: a line through two noisy peaks means nothing
            lines.append(f"- {what}: does not grow with N (bounded by the chunk): "
                         f"at most {max(r[key] for r in rows) / mib:.0f} MiB measured")
            continue
        lines.append(f"- {what}: {slope:.2f} B/sample + {fixed / mib:.1f} MiB fixed "
                     f"= {at / 2**30:.2f} GiB")
    lines.append(f"- EpochLosses while collecting (not new here): "
                 f"{rows[0]['epoch_losses_bytes'] / rows[0]['n']:.0f} B/sample = "
                 f"{rows[0]['epoch_losses_bytes'] / rows[0]['n'] * TARGET_N / 2**30:.1f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[10**6, 10**7])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--values-from", default=None, help="a run's scan.zarr with history")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    draw = value_source(args.values_from, args.seed)
    store_features_warm = np.zeros((2, 8), np.float32)  # compile the kernels outside the peaks
    from scan_core.history import history_features
    history_features([store_features_warm], chunk_samples=4)
    root = tempfile.mkdtemp(prefix="bench_history-")
    try:
        rows = [one_size(n, args.epochs, draw, root) for n in sorted(args.sizes)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    values = (f"resampled from {args.values_from}" if args.values_from else "gamma(2, 1)")
    cmd = "python benchmarks/bench_history.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    block = table(rows, args.epochs, cmd.strip(), values)
    print(block)
    if args.write_docs:
        write_docs(block, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
