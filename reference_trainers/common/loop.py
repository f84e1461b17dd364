"""What every reference trainer's run does outside its model and framework: the epoch loop,
the summary, the closing line and the command-line wrapper. Shared by the CLIP and MoCo
trainers, PyTorch and JAX (numpy only: a JAX run imports this without loading torch).

`common/lifecycle.py` re-exports every name here for the PyTorch trainers and adds what is
torch's own (process groups, torch checkpoints).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from reference_trainers.common.rundir import RunDir

__all__ = ["cli_main", "epoch_loop", "finish", "fmt", "framework_of"]


def _due(every: int, epoch: int) -> bool:
    return bool(every) and (epoch + 1) % every == 0


def epoch_loop(cfg: Any, pruner: Any, sampler: Any, run_dir: RunDir, *, rank: int, world: int,
               wall: float, stop_after: int | None,
               train_epoch: Callable[[int], dict[str, Any]],
               evaluate: Callable[[bool], dict[str, float]],
               checkpoint: Callable[[int, float], None],
               line: Callable[[dict[str, Any]], str],
               extra_stats: Callable[[], dict[str, Any]] | None = None,
               skipped: Callable[[int, int], str | None] | None = None) -> dict[str, Any]:
    """The epochs of a run, the same for every trainer: plan (sampler.set_epoch), train, close
    the epoch in the pruner, evaluate when due (cfg.eval_every / cfg.probe_every, and at the
    end; `evaluate(probe)`), log a metrics row and print its line (rank 0), and checkpoint
    (`checkpoint` is called on every rank, as it may gather; rank 0 writes the file).
    `skipped(epoch, samples)` (common/skipped.SkippedLog): lists the samples that could not be
    read, raises when none could, and gives a line to print when the list grew.
    Returns the last row ({} when nothing was left to run)."""
    row: dict[str, Any] = {}
    stop = cfg.epochs if stop_after is None else min(cfg.epochs, pruner.next_epoch + stop_after)
    for epoch in range(pruner.next_epoch, stop):
        start = time.perf_counter()
        sampler.set_epoch(epoch)
        stats = train_epoch(epoch)
        note = skipped(epoch, stats.get("samples", 1)) if skipped is not None else None
        summary = pruner.end_epoch()
        if extra_stats is not None:
            stats.update(extra_stats())
        train_seconds = time.perf_counter() - start
        wall += train_seconds
        last_epoch = epoch == cfg.epochs - 1
        scores: dict[str, float] = {}
        if rank == 0 and (last_epoch or _due(cfg.eval_every, epoch)
                          or _due(cfg.probe_every, epoch)):
            scores = evaluate(last_epoch or _due(cfg.probe_every, epoch))
        row = {**summary.as_dict(), **stats, **scores, "kept_share": 1 - summary.pruned_share,
               "seconds": train_seconds, "wall_seconds": wall, "world_size": world}
        if rank == 0:
            run_dir.append_metrics(row)
            print(line(row), flush=True)
            if note:
                print(note, flush=True)
        checkpoint(epoch, wall)  # every rank: each saves what is its own (rank 0 writes)
    return row


def finish(run_dir: RunDir, pruner: Any, cfg: Any, rank: int, last_row: dict[str, Any], *,
           headline: Sequence[str]) -> dict[str, Any]:
    """Write summary.json (rank 0) and the coreset, and return the summary: the `headline`
    metrics of the last epoch, the counted pruned share, visits, steps and seconds."""
    rows = run_dir.read_metrics()
    last_row = last_row or (rows[-1] if rows else {})  # a resume of a finished run
    summary = {
        "preset": cfg.preset, "pruning": cfg.pruning, "epochs": cfg.epochs,
        **{key: last_row.get(key) for key in headline},
        "realised_pruned_share": pruner.log[-1]["realised_saving"] if pruner.log else 0.0,
        "sample_visits": int(sum(r["samples"] for r in rows)) if rows else 0,
        "steps": int(sum(r["steps"] for r in rows)) if rows else 0,
        "wall_seconds": last_row.get("wall_seconds"),
        "seconds_per_epoch": [r["seconds"] for r in rows],
        "warmup_ended_at": pruner.warmup_ended_at,
    }
    if rank == 0:
        run_dir.write_summary(summary)
        if pruner.log and any(r["phase"] == "prepare" for r in pruner.log):
            np.save(run_dir.path / "coreset.npy", pruner.coreset())
    return summary


def fmt(value: float | None, spec: str = ".4f") -> str:
    """A metric for the closing line: '-' when it was not measured."""
    return "-" if value is None else format(value, spec)


def cli_main(make_config: Callable[[], Any], args: Any, run: Callable[..., dict[str, Any]],
             closing_line: Callable[[dict[str, Any]], str], *,
             shutdown: Callable[[], None] | None = None) -> int:
    """A trainer's `main` after parsing: build the config, run, turn our errors into exit code
    2 with the message, print the closing line on rank 0, then `shutdown()` (the PyTorch
    trainers leave their process group there)."""
    from scan_core import ScanError
    from reference_trainers.common.errors import TrainerError

    try:
        result = run(make_config(), args.out, resume=args.resume, quiet=args.quiet,
                     stop_after=args.stop_after)
    except (ScanError, TrainerError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(closing_line(result), flush=True)
    if shutdown is not None:
        shutdown()
    return 0


def framework_of(argv: Sequence[str]) -> str:
    """The `--framework` a command line asks for ('torch' when absent), read without the
    trainer's full parser, so `python -m reference_trainers.clip` can pick its trainer before
    importing any framework. A bad value is left for the full parser to report."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--framework", default="torch")
    known, _ = parser.parse_known_args(list(argv))
    return known.framework
