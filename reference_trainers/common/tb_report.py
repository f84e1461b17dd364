"""`--report-to tensorboard`: per-step and per-epoch scalars as TensorBoard event files under
the run directory (`RUN/tensorboard/`), beside metrics.jsonl (which stays the record).

* Per step (open_clip's `train/*` keys): `train/loss`, `train/lr`, `train/kept_share` (the
  epoch plan's share of samples kept), `train/samples_per_second`. The step axis counts
  optimiser steps over the whole run; a resumed run continues it from metrics.jsonl's rows.
* Per epoch (axis: the epoch): `scan/rho_cur`, `scan/num_candidates` (|D'|), `scan/num_kept`,
  `scan/pruned_share`, `scan/realised_saving`, `scan/phase` (0 warmup, 1 prepare, 2 mutate,
  3 full), and every evaluation result as `eval/<name>` (zero-shot, recall@K, probe).

Written with the `tensorboard` package's own event-file writer (the scalar events
torch.utils.tensorboard's `add_scalar` writes, without torch or TensorFlow), so the PyTorch
trainers and the JAX CLIP trainer share this module: the project's `tensorboard` extra
(`pip install 'scan-prune[tensorboard]'`). Only rank 0 writes.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from reference_trainers.common.errors import TrainerError
from reference_trainers.common.rundir import RunDir

__all__ = ["EVAL_PREFIXES", "NullReporter", "ScalarWriter", "TensorBoardReporter",
           "open_reporter", "open_run_reporter", "parse_report_to"]

REPORTERS = ("tensorboard", "none")
PHASES = {"warmup": 0, "prepare": 1, "mutate": 2, "full": 3}
SCAN_KEYS = ("rho_cur", "num_candidates", "num_kept", "pruned_share", "realised_saving")
EVAL_PREFIXES = ("zero_shot_", "linear_probe_", "image_to_text_", "text_to_image_", "knn_")


def parse_report_to(value: str | None) -> tuple[str, ...]:
    """The reporters a `--report-to` value names ("tensorboard", comma lists as open_clip
    takes them; None, "" or "none": none). An unknown one raises TrainerError naming it."""
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip() and n != "none")
    unknown = [n for n in names if n not in REPORTERS]
    if unknown:
        raise TrainerError(f"--report-to {value}: {', '.join(unknown)} is not supported; the "
                           "trainers report to tensorboard (or none). metrics.jsonl is always "
                           "written: any other logger can read it")
    return names


class NullReporter:
    """Reports nothing (no --report-to, or a rank other than 0). Every reporter is a context
    manager: a trainer's loop runs inside it, so a run that fails is closed (its events
    flushed) as one that ends."""

    def __enter__(self) -> "NullReporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def step(self, *, loss: float, lr: float, kept_share: float, samples: int) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class ScalarWriter:
    """Scalar summaries in TensorBoard event files under `log_dir`, with tensorboard's
    EventFileWriter: each `add_scalar` is one Event with a simple_value, as SummaryWriter's."""

    def __init__(self, log_dir: str):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self._writer = EventFileWriter(log_dir)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))])
        self._writer.add_event(self._event(wall_time=time.time(), step=int(step),
                                           summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class TensorBoardReporter(NullReporter):
    """Event files in `directory`; `first_step`: optimiser steps already taken (resume)."""

    def __init__(self, directory: pathlib.Path, *, first_step: int = 0):
        try:
            self.writer = ScalarWriter(str(directory))
        except ImportError as err:
            raise TrainerError(f"--report-to tensorboard needs the tensorboard package ({err}): "
                               "pip install 'scan-prune[tensorboard]' (or pip install "
                               "tensorboard), or drop --report-to") from err
        self.global_step = first_step
        self._last = time.perf_counter()

    def step(self, *, loss: float, lr: float, kept_share: float, samples: int) -> None:
        now = time.perf_counter()
        step, seconds, self._last = self.global_step, now - self._last, now
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/kept_share", kept_share, step)
        if seconds > 0:
            self.writer.add_scalar("train/samples_per_second", samples / seconds, step)
        self.global_step += 1

    def epoch(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        for key in SCAN_KEYS:
            if row.get(key) is not None:
                self.writer.add_scalar(f"scan/{key}", float(row[key]), epoch)
        if row.get("phase") in PHASES:
            self.writer.add_scalar("scan/phase", PHASES[row["phase"]], epoch)
        for key, value in row.items():
            if key.startswith(EVAL_PREFIXES) and isinstance(value, (int, float)):
                self.writer.add_scalar(f"eval/{key}", float(value), epoch)
        self.writer.flush()
        self._last = time.perf_counter()  # evaluation time is not a step's

    def close(self) -> None:
        self.writer.close()


def open_run_reporter(report_to: str | None, run_dir: RunDir, *, rank: int,
                      last_epoch: int) -> NullReporter:
    """Every trainer's reporter at its start, or at its resume after `last_epoch` (-1: a fresh
    run): rank 0 cuts metrics.jsonl back to the epochs its checkpoint holds (the resumed run
    repeats the rest), then opens open_reporter with their rows, so TensorBoard's steps go on
    from theirs. Other ranks write nothing: a NullReporter."""
    if rank != 0:
        return NullReporter()
    run_dir.truncate_metrics(last_epoch)
    return open_reporter(report_to, run_dir.path, rank=rank, rows=run_dir.read_metrics())


def open_reporter(report_to: str | None, run_path: pathlib.Path, *, rank: int,
                  rows: list[dict[str, Any]]) -> NullReporter:
    """The run's reporter: TensorBoard in run_path/tensorboard on rank 0 when asked, else a
    NullReporter. `rows`: metrics.jsonl's rows of the epochs already run (their steps)."""
    names = parse_report_to(report_to)
    if "tensorboard" not in names or rank != 0:
        return NullReporter()
    return TensorBoardReporter(pathlib.Path(run_path) / "tensorboard",
                               first_step=int(sum(r.get("steps", 0) for r in rows)))
