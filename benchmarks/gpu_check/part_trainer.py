"""Part 5: a short real run of the CLIP trainer on the GPU, as a user would start it:
Fashion-MNIST written as tar shards (reference_trainers.common.corpora.make_shards), then
`python -m reference_trainers.clip --model ViT-B-32 --precision bf16 --data shards:DIR` with a
fixed one-epoch warm-up, so the run has a warm-up epoch, a preparation epoch and three mutation
epochs. Each epoch's wall-clock ("seconds" in metrics.jsonl: training, end_epoch and the
store; evaluation and checkpoints are outside it) is set against its kept share: a mutation
epoch should save at least 0.9 of the share of visits it prunes, relative to the preparation
epoch (full data, after the warm-up epoch has paid for cuDNN's and the allocator's start).

Data: the staged Fashion-MNIST subset (DATA/fashion-mnist, benchmarks/stage_gpu_check.py),
else /usr/share/datasets/fashion-mnist, else generated 28x28 class-structured images (the device
has no datasets). The trainer has no DataLoader-workers flag: its shard stream is read in the
main process (num_workers=0), which this part reports rather than works around.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np

from benchmarks.gpu_check.runner import PartContext

_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
          "t10k-labels-idx1-ubyte")
SYSTEM_FMNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


def settings(dry_run: bool) -> dict:
    """The run's flags. GPU: lr 1e-4 (a NaN loss would stop the run: the pruner refuses it)."""
    if dry_run:
        return dict(num_samples=384, model="cpu", precision="fp32", batch=64, epochs=5,
                    lr=2e-3, num_test=200, extra=["--threads", "1"])
    return dict(num_samples=8192, model="ViT-B-32", precision="bf16", batch=256, epochs=5,
                lr=1e-4, num_test=1000, extra=[])


def run(ctx: PartContext) -> None:
    s = settings(ctx.dry_run)
    data_dir, source = find_fashion_mnist(ctx)
    ctx.emit("data", source, note=str(data_dir))
    shards = ctx.work_dir / "trainer-shards"
    run_dir = ctx.work_dir / "trainer-run"
    for path in (shards, run_dir):
        shutil.rmtree(path, ignore_errors=True)
    _call(ctx, [sys.executable, "-m", "reference_trainers.common.corpora.make_shards",
                "--from-fashion-mnist", "--data-dir", str(data_dir), "--num-samples",
                str(s["num_samples"]), "--samples-per-shard", "1024", "--out", str(shards)],
          "make_shards", reserve_s=30)
    cmd = [sys.executable, "-m", "reference_trainers.clip", "--model", s["model"],
           "--precision", s["precision"], "--data", f"shards:{shards}", "--data-dir",
           str(data_dir), "--num-test", str(s["num_test"]), "--epochs", str(s["epochs"]),
           "--batch-size", str(s["batch"]), "--lr", str(s["lr"]), "--scan-warmup-epochs", "1",
           "--eval-every", "0", "--quiet", "--out", str(run_dir), *s["extra"]]
    ctx.emit("trainer command", " ".join(["python"] + cmd[1:]).replace(str(ctx.work_dir), "W"),
             note="DataLoader workers: no such trainer flag; the stream runs in the main process")
    _call(ctx, cmd, "trainer", reserve_s=3)
    report(ctx, run_dir)


def find_fashion_mnist(ctx: PartContext) -> tuple[pathlib.Path, str]:
    """(IDX folder, where it came from): staged, the system's, or generated now."""
    for folder, source in ((ctx.data_dir / "fashion-mnist", "staged Fashion-MNIST subset"),
                           (SYSTEM_FMNIST, "system Fashion-MNIST")):
        if all(any((folder / (f + ext)).is_file() for ext in ("", ".gz")) for f in _FILES):
            return folder, source
    folder = ctx.work_dir / "generated-fmnist"
    write_generated_fmnist(folder, num_train=settings(ctx.dry_run)["num_samples"], num_test=1000)
    return folder, "generated (no Fashion-MNIST on this machine)"


def write_generated_fmnist(folder: pathlib.Path, *, num_train: int, num_test: int,
                           seed: int = 0) -> None:
    """Fashion-MNIST-shaped IDX files of 28x28 uint8 images: each of the 10 classes a fixed
    random smooth template, each image its template shifted by up to 2 pixels plus noise, so a
    CLIP model has something to learn and the losses spread as on real data."""
    from reference_trainers.common.data import write_idx

    rng = np.random.default_rng(seed)
    coarse = rng.random((10, 7, 7))
    templates = np.kron(coarse, np.ones((4, 4))) * 255  # (10, 28, 28)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        shifts = rng.integers(-2, 3, (count, 2))
        images = np.stack([np.roll(templates[c], tuple(d), axis=(0, 1))
                           for c, d in zip(labels, shifts)])
        images = np.clip(images + rng.normal(0, 30, images.shape), 0, 255).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))


def _call(ctx: PartContext, cmd: list[str], what: str, *, reserve_s: float) -> None:
    timeout = max(5.0, ctx.left_s() - reserve_s)
    try:
        done = subprocess.run(cmd, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} did not finish in {timeout:.0f} s (this part's time box)")
    if done.returncode != 0:
        raise RuntimeError(f"{what} exited with {done.returncode}; its output is in the log")


def report(ctx: PartContext, run_dir: pathlib.Path) -> None:
    """Per-epoch rows and the saving against the pruned share (metrics.jsonl of the run)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        ctx.emit(f"epoch {r['epoch']} {r['phase']}", round(r["seconds"], 2), "s",
                 note=f"kept {r['kept_share']:.1%}, {r['steps']} steps, {r['samples']} samples, "
                      f"loss {r['train_loss']:.3f}", **{k: r.get(k) for k in (
                          "epoch", "phase", "kept_share", "steps", "samples", "seconds")})
    prepare = [r for r in rows if r["phase"] == "prepare"]
    mutate = [r for r in rows if r["phase"] == "mutate"]
    if not prepare or not mutate:
        raise RuntimeError(f"the run had phases {[r['phase'] for r in rows]}; expected a "
                           "preparation and mutation epochs")
    full_s = prepare[0]["seconds"]
    for r in mutate:
        pruned, saved = 1 - r["kept_share"], 1 - r["seconds"] / full_s
        ctx.emit(f"epoch {r['epoch']}: time saved / visits pruned",
                 round(saved / pruned, 3) if pruned > 0 else "n/a (nothing pruned)",
                 note=f"saved {saved:.1%} of the preparation epoch's {full_s:.2f} s, pruned "
                      f"{pruned:.1%}")
    pruned_s = sum(full_s * (1 - r["kept_share"]) for r in mutate)
    saved_s = sum(full_s - r["seconds"] for r in mutate)
    ratio = saved_s / pruned_s if pruned_s > 0 else float("nan")
    ctx.emit("mutation epochs: time saved / visits pruned", round(ratio, 3),
             note=f"{saved_s:.2f} s saved of {pruned_s:.2f} s pruned at the preparation epoch's "
                  f"rate; target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'}"
                  + (" (dry run: CPU timings, not meaningful)" if ctx.dry_run else ""),
             ratio=ratio)
    summary = json.loads((run_dir / "summary.json").read_text())
    ctx.emit("zero-shot top-1 at the end", summary.get("zero_shot_top1"),
             note=f"realised pruned share {summary['realised_pruned_share']:.1%}, "
                  f"{summary['wall_seconds']:.1f} s of training epochs")
