"""The steps every reference trainer's `train()` takes around its model, as plain functions it
calls in its own loop (big_vision's manner): which epochs to run, when to evaluate, the
epoch's metrics row and line, the summary, and the command line's ending. Shared by the CLIP
and MoCo trainers, PyTorch and JAX (numpy only: a JAX run imports this without loading torch).

A trainer's loop reads, for every epoch: plan it (`sampler.set_epoch`), train it, close it
in the pruner (`pruner.end_epoch()`), stop the epoch's clock (`EpochLog.stop_clock`),
evaluate when `evaluation_due` says so (rank 0), write the row (`EpochLog.write`, rank 0)
and checkpoint; then `finish` writes the summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from reference_trainers.common.rundir import RunDir
from scan_core import EpochSummary, ScanPruner

__all__ = ["EpochLog", "RunConfig", "command_line", "evaluation_due", "finish", "fmt",
           "framework_of", "run_command"]


class RunConfig(Protocol):
    """What these steps read of a trainer's config (TrainConfig and MocoConfig have it)."""

    preset: str
    epochs: int
    eval_every: int     # evaluate every k epochs (0: at the end only)
    probe_every: int    # the linear probe every k epochs (0: at the end only)
    threads: int | None

    @property
    def pruning(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def _due(every: int, epoch: int) -> bool:
    return bool(every) and (epoch + 1) % every == 0


def evaluation_due(cfg: RunConfig, epoch: int) -> tuple[bool, bool]:
    """(evaluate now, with the linear probe): at the last epoch always and with the probe,
    otherwise every cfg.eval_every epochs, and every cfg.probe_every with the probe."""
    probe = epoch == cfg.epochs - 1 or _due(cfg.probe_every, epoch)
    return probe or _due(cfg.eval_every, epoch), probe


class EpochLog:
    """The epochs a run has left, their clock and their metrics rows.

    `seconds` of a row is the epoch's training time: planning, steps, closing the epoch in the
    pruner and the epoch's statistics; evaluation and the checkpoint are not counted, nor are
    they in `wall_seconds`, the run's training time so far (a resumed run continues it)."""

    def __init__(self, run_dir: RunDir, *, rank: int, world: int, wall_seconds: float) -> None:
        self.run_dir, self.rank, self.world = run_dir, rank, world
        self.wall_seconds = wall_seconds
        self.seconds = 0.0
        self._start = 0.0
        self.row: dict[str, Any] = {}  # the last row written ({} when no epoch ran)

    def epochs(self, cfg: RunConfig, pruner: ScanPruner,
               stop_after: int | None) -> Iterator[int]:
        """The epochs left (from the pruner's next one), at most `stop_after` of them; each
        epoch's clock starts when it is handed out."""
        stop = cfg.epochs if stop_after is None else min(cfg.epochs,
                                                         pruner.next_epoch + stop_after)
        for epoch in range(pruner.next_epoch, stop):
            self._start = time.perf_counter()
            yield epoch

    def stop_clock(self) -> None:
        """End the epoch's training time (before evaluation)."""
        self.seconds = time.perf_counter() - self._start
        self.wall_seconds += self.seconds

    def write(self, summary: EpochSummary, stats: dict[str, Any], scores: dict[str, float], *,
              line: Callable[[dict[str, Any]], str], note: str | None = None) -> dict[str, Any]:
        """The epoch's metrics row: the pruner's summary, the trainer's `stats` and `scores`,
        the kept share and the clock; rank 0 appends it to metrics.jsonl and prints `line(row)`
        (then `note`, e.g. common/skipped.py's)."""
        self.row = {**summary.as_dict(), **stats, **scores, "kept_share": 1 - summary.pruned_share,
                    "seconds": self.seconds, "wall_seconds": self.wall_seconds,
                    "world_size": self.world}
        if self.rank == 0:
            self.run_dir.append_metrics(self.row)
            print(line(self.row), flush=True)
            if note:
                print(note, flush=True)
        return self.row


def finish(run_dir: RunDir, pruner: ScanPruner, cfg: RunConfig, rank: int,
           last_row: dict[str, Any], *, headline: Sequence[str]) -> dict[str, Any]:
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


class Train(Protocol):
    """A trainer's `train(cfg, out, ...)`, as the command line calls it."""

    def __call__(self, cfg: Any, out: str, *, resume: bool, quiet: bool,
                 stop_after: int | None) -> dict[str, Any]: ...


def run_command(train: Train, make_config: Callable[[], RunConfig], args: argparse.Namespace,
                headline: tuple[str, ...], *, shutdown: Callable[[], None] | None = None) -> int:
    """Every trainer's `main` after parsing: build the config, train, turn our errors into
    exit code 2 with the message, print the closing line on rank 0, then `shutdown()` (the
    PyTorch trainers leave their process group there, the JAX ones their processes)."""
    from scan_core import ScanError
    from reference_trainers.common.errors import TrainerError
    from reference_trainers.common.progress import closing_line

    try:
        result = train(make_config(), args.out, resume=args.resume, quiet=args.quiet,
                       stop_after=args.stop_after)
    except (ScanError, TrainerError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(closing_line(result, headline), flush=True)
    if shutdown is not None:
        shutdown()
    return 0


def framework_of(argv: Sequence[str]) -> str:
    """The `--framework` a command line asks for ('torch' when absent), read without the
    trainer's full parser, so `python -m reference_trainers.clip` can pick its trainer before
    importing any framework. A bad value is left for the full parser to report."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--framework", default="torch")
    known, _ = parser.parse_known_args(list(argv))
    return known.framework


def command_line(paradigm: str, argv: Sequence[str]) -> int:
    """`python -m reference_trainers.clip|moco ARGV`: the `main` of the paradigm's JAX
    trainer (`--framework jax`: jax/<paradigm>.py, torch never imported) or PyTorch trainer
    (<paradigm>/train.py)."""
    import importlib

    module = (f"reference_trainers.jax.{paradigm}" if framework_of(argv) == "jax"
              else f"reference_trainers.{paradigm}.train")
    return importlib.import_module(module).main(list(argv))
