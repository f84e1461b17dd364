"""The shard pipeline with DataLoader workers, and what a pruned epoch saves in wall-clock.

Two measurements on one shard set written from Fashion-MNIST (`make_shards`), side by side
in one process so that the ratios share the machine's state:

1. samples/s of the shard pipeline alone (read from the tar, decode, resize, collate,
   augment; no model) at 0 and at N workers, alternating blocks `--rounds` times, at the image
   size a GPU preset trains on (`--image-size`, RGB): what `--workers` buys a trainer whose
   device waits for data.
2. wall-clock of pruned against unpruned epochs of the CLIP trainer on the same shards
   (`python -m reference_trainers.clip --preset cpu-tiny --data shards:DIR`, a subprocess),
   read from its metrics rows: a SCAN schedule with the warm-up fixed at one epoch and
   rho 0.45 per end, so its mutation epochs prune a large share. Per pruned epoch:
   time saved = 1 - seconds / the mean seconds of the unpruned (preparation) epochs, against
   the share of visits pruned = 1 - kept / N. The issue's bar: saved >= 0.9 x pruned.
   The trainer runs `--rounds` times; each epoch's seconds are the median over the rounds
   (a 2-core box moves a 4-second epoch by 15% from one run to the next).

    .venv/bin/python benchmarks/bench_workers.py
    .venv/bin/python benchmarks/bench_workers.py --num-samples 8000 --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))  # this checkout's packages
from bench_env import machine, write_docs  # noqa: E402

BEGIN, END = "<!-- bench_workers:begin -->", "<!-- bench_workers:end -->"


def write_shard_set(out: Path, num_samples: int, data_dir: str | None) -> None:
    from reference_trainers.common.corpora.make_shards import main as make_shards

    argv = ["--from-fashion-mnist", "--out", str(out), "--num-samples", str(num_samples),
            "--samples-per-shard", "1000"]
    if data_dir:
        argv += ["--data-dir", data_dir]
    if make_shards(argv) != 0:
        raise SystemExit("make_shards failed (see above)")


def pipeline_rate(shards: Path, workers: int, image_size: int, batch_size: int) -> float:
    """Samples per second of one full epoch of the shard pipeline at `workers`."""
    import torch

    from reference_trainers.common.corpora import ImageSpec, ShardIndex, ShardStream
    from reference_trainers.common.tokenizer_choice import load_tokenizer
    from reference_trainers.common.workers import stream_batches
    from scan_core import ScanPruner

    tokenizer = load_tokenizer("word", context_length=16)
    stream = ShardStream(ShardIndex.open(shards), tokenizer=tokenizer.encode,
                         spec=ImageSpec.gpu(image_size), num_workers=workers, seed=0)
    plan = ScanPruner(stream.num_samples).plan_epoch(0)  # warm-up: every sample, once
    generator = torch.Generator().manual_seed(0)
    served = 0
    t0 = time.perf_counter()
    for images, _, ids in stream_batches(stream, plan, batch_size=batch_size, workers=workers,
                                         generator=generator):
        served += len(ids)
    seconds = time.perf_counter() - t0
    if served != stream.num_samples:
        raise SystemExit(f"the pipeline served {served} of {stream.num_samples} samples")
    return served / seconds


def pruned_epochs(shards: Path, workers: int, epochs: int, threads: int) -> list[dict]:
    """The CLIP trainer's metrics rows on the shard set (a SCAN run that prunes hard)."""
    with tempfile.TemporaryDirectory() as run:
        cmd = [sys.executable, "-m", "reference_trainers.clip", "--preset", "cpu-tiny",
               "--data", f"shards:{shards}", "--tokenizer", "word", "--workers", str(workers),
               "--epochs", str(epochs), "--scan-warmup-epochs", "1", "--t-cos", "2",
               "--rho-low", "0.45", "--rho-high", "0.45", "--eval-every", "0",
               "--probe-every", "0", "--threads", str(threads), "--out", run]
        done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode != 0:
            raise SystemExit(f"the trainer failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
        lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """One row per epoch: the seconds the median over the runs, which must have kept the same
    samples epoch by epoch (the same seeded schedule), else their epochs do not compare."""
    kept = [[r["num_kept"] for r in rows] for rows in runs]
    if any(k != kept[0] for k in kept):
        raise SystemExit(f"the trainer runs kept different counts per epoch: {kept}")
    return [{**rows[0], "seconds": float(np.median([float(r["seconds"]) for r in rows]))}
            for rows in zip(*runs)]


def epoch_saving(rows: list[dict], num_samples: int) -> list[dict]:
    """Per pruned epoch: the share of visits pruned and of wall-clock saved against the mean
    unpruned epoch of the run after its first (which pays start-up costs)."""
    def seconds(row: dict) -> float:
        return float(row["seconds"])

    full = [seconds(r) for r in rows[1:] if r["num_kept"] == num_samples]
    if not full:
        raise SystemExit("no unpruned epoch after the first to compare with")
    base = float(np.mean(full))
    out = []
    for r in rows:
        if r["num_kept"] < num_samples:
            pruned = 1 - r["num_kept"] / num_samples
            saved = 1 - seconds(r) / base
            out.append({"epoch": r["epoch"], "pruned": pruned, "saved": saved,
                        "ratio": saved / pruned})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating 0 / N blocks")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8, help="trainer epochs (part 2)")
    parser.add_argument("--threads", type=int, default=1, help="trainer torch threads")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        write_shard_set(shards, args.num_samples, args.data_dir)
        rates: dict[int, list[float]] = {0: [], args.workers: []}
        for _ in range(args.rounds):
            for workers in rates:
                rates[workers].append(pipeline_rate(shards, workers, args.image_size,
                                                    args.batch_size))
                print(f"pipeline, {workers} workers: {rates[workers][-1]:.0f} samples/s",
                      flush=True)
        runs = []
        for _ in range(args.rounds):
            runs.append(pruned_epochs(shards, args.workers, args.epochs, args.threads))
            print("trainer epochs (s):", [round(float(r["seconds"]), 2) for r in runs[-1]],
                  flush=True)
        rows = median_rows(runs)
    saving = epoch_saving(rows, args.num_samples)
    ratio_min = min(s["ratio"] for s in saving)
    where = ", ".join(f"{k} {v}" for k, v in machine().items())
    block = [f"Machine: {where}. Command: `.venv/bin/python benchmarks/bench_workers.py "
             f"--num-samples {args.num_samples} --workers {args.workers} --rounds {args.rounds}`.",
             "",
             "| shard pipeline ({}x{} RGB, batch {}) | samples/s per round | median |".format(
                 args.image_size, args.image_size, args.batch_size),
             "|---|---|---|"]
    for workers, values in rates.items():
        block.append(f"| {workers} workers | {', '.join(f'{v:.0f}' for v in values)} | "
                     f"{np.median(values):.0f} |")
    block += ["", f"CLIP trainer (cpu-tiny, {args.workers} workers, {args.threads} thread(s)), "
              f"{args.rounds} runs, each epoch's median seconds; pruned epochs against the mean "
              "unpruned epoch after the first:", "",
              "| epoch | visits pruned | wall-clock saved | saved / pruned |", "|---|---|---|---|"]
    block += [f"| {s['epoch']} | {s['pruned']:.1%} | {s['saved']:.1%} | {s['ratio']:.2f} |"
              for s in saving]
    block += ["", f"Lowest saved / pruned: {ratio_min:.2f} (the bar: 0.9)."]
    text = "\n".join(block)
    print(text)
    if args.write_docs:
        write_docs(text, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
