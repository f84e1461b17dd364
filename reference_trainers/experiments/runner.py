"""Run a grid: a pool of worker processes, resumable, one JSON per run.

    root/
      runs/<run_id>/         the trainer's run directory (config, metrics, store, checkpoints)
      results/<run_id>.json  the run's result: status, error, config, summary, metrics rows
      specs/<run_id>.json    what the worker was asked to run
      logs/<run_id>.log      the worker's output
      locks/<run_id>.lock    held by the worker training the run

Order: seed by seed (seed 0 of every cell first, so an interrupted grid already has a complete
first seed), first-stage runs before the runs derived from them. Each run writes only its own
folder and JSON (renamed into place) and holds locks/<run_id>.lock while it trains, so workers,
and even two grids, can share a root without ever training one run twice at once.

Resume: a run whose JSON exists is skipped (`retry_failed` re-runs the failed ones); a run
that was stopped half-way resumes through the trainer's own resume from its last completed
epoch. Ctrl-C, SIGTERM or SIGHUP stop the workers with the grid, which leaves every unfinished
run resumable.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from reference_trainers.experiments.suites import RunSpec
from reference_trainers.experiments.worker import BUSY_EXIT, execute, write_result

HEADLINES = ("zero_shot_top1", "linear_probe_top1", "knn_top1")


def load_result(root: Path, run_id: str) -> dict[str, Any] | None:
    path = Path(root) / "results" / f"{run_id}.json"
    return json.loads(path.read_text()) if path.exists() else None


def order(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """Unique runs, seed by seed, first-stage runs before the runs derived from them, in the
    suite's order otherwise (a pool starts a derived run only once its sources finished)."""
    unique = list({s.run_id: s for s in specs}.values())
    return sorted(unique, key=lambda s: (s.seed, bool(s.derive)))


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """One line per finished run: count, id, status, time, headline numbers, elapsed, ETA."""

    def __init__(self, total: int, workers: int, stream: TextIO) -> None:
        self.total, self.workers, self.stream = total, max(1, workers), stream
        self.done, self.durations, self.start = 0, [], time.perf_counter()

    def finished(self, spec: RunSpec, result: dict[str, Any], seconds: float) -> None:
        self.done += 1
        self.durations.append(seconds)
        remaining = self.total - self.done
        eta = sum(self.durations) / len(self.durations) * remaining / self.workers
        summary = result.get("summary") or {}
        numbers = [f"{k} {summary[k]:.4f}" for k in HEADLINES if summary.get(k) is not None]
        if summary.get("realised_pruned_share") is not None:
            numbers.append(f"pruned {summary['realised_pruned_share']:.1%}")
        detail = ", ".join(numbers) if result["status"] == "ok" else result.get("error", "")
        print(f"[{self.done}/{self.total}] {spec.run_id} {result['status']} {seconds:.0f}s "
              f"({detail[:160]}) | elapsed {_clock(time.perf_counter() - self.start)}, "
              f"ETA {_clock(eta)}", file=self.stream, flush=True)


def run_grid(specs: Sequence[RunSpec], root: str | os.PathLike[str], *, workers: int = 1,
             threads: int | None = 1, data_dir: str | None = None, retry_failed: bool = False,
             stream: TextIO | None = None, poll_seconds: float = 0.2) -> list[dict[str, Any]]:
    """Run every spec without a result under `root`; returns all their results.

    workers: parallel worker processes (each with `threads` torch threads); 0 runs each in
    this process, one after another (tests, debugging).
    """
    root = Path(root).resolve()  # workers start in the repository root
    data_dir = str(Path(data_dir).resolve()) if data_dir else None
    stream = stream if stream is not None else sys.stdout
    ordered = order(specs)
    todo = [s for s in ordered if not _done(root, s.run_id, retry_failed)]
    print(f"{len(ordered)} runs, {len(ordered) - len(todo)} already done, {len(todo)} to run "
          f"({max(workers, 1)} worker(s) x {threads or 'default'} thread(s)) in {root}",
          file=stream, flush=True)
    progress = Progress(len(todo), workers, stream)
    if workers <= 0:
        for spec in todo:
            start = time.perf_counter()
            result = execute(spec, root, threads=threads, data_dir=data_dir)
            progress.finished(spec, result, time.perf_counter() - start)
    else:
        with _stop_on_signals():
            _pool(todo, root, workers, threads, data_dir, progress, poll_seconds,
                  {s.run_id for s in ordered})
    return [load_result(root, s.run_id) or {} for s in ordered]


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM / SIGHUP stop the grid like Ctrl-C: the workers are stopped with it, never
    left training a run directory the next invocation would start again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _done(root: Path, run_id: str, retry_failed: bool) -> bool:
    result = load_result(root, run_id)
    return result is not None and (result.get("status") == "ok" or not retry_failed)


def _pool(todo: list[RunSpec], root: Path, workers: int, threads: int | None,
          data_dir: str | None, progress: Progress, poll_seconds: float,
          grid_ids: set[str]) -> None:
    pending = list(todo)
    running: dict[str, tuple[RunSpec, subprocess.Popen, float]] = {}
    try:
        while pending or running:
            while len(running) < workers:
                ready = next((s for s in pending if all(
                    load_result(root, src) is not None for src in s.sources)), None)
                if ready is None:
                    break
                pending.remove(ready)
                running[ready.run_id] = (ready, _start(ready, root, threads, data_dir),
                                         time.perf_counter())
            if not running and pending:  # sources with no result, none of them running here
                for spec in pending:
                    _unreachable(root, spec, grid_ids, progress)
                pending = []
            for run_id, (spec, proc, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[run_id]
                result = load_result(root, run_id)
                if result is None and proc.returncode == BUSY_EXIT:
                    result = {"status": "busy", "error": "another process is training it"}
                elif result is None and proc.returncode < 0:  # killed: left resumable
                    result = {"status": "interrupted",
                              "error": f"worker killed by signal {-proc.returncode}; the next "
                                       "run of this grid resumes it"}
                elif result is None:
                    result = _crashed(root, spec, proc.returncode)
                progress.finished(spec, result, time.perf_counter() - start)
            time.sleep(poll_seconds)
    finally:  # Ctrl-C or an error here: stop the workers; their runs stay resumable
        for _, proc, _ in running.values():
            proc.terminate()
        for _, proc, _ in running.values():
            proc.wait()


def _unreachable(root: Path, spec: RunSpec, grid_ids: set[str], progress: Progress) -> None:
    """A run whose sources will not get a result from this grid: a failed JSON when a source
    is not in the grid at all, else (a source busy in another process) no JSON: next time."""
    outside = [src for src in spec.sources if src not in grid_ids]
    if outside:
        write_result(root, {"run_id": spec.run_id, "spec": spec.to_dict(), "status": "failed",
                            "metrics": [], "error": f"source runs {outside} are not in this "
                                                    "grid and have no result"})
        progress.finished(spec, load_result(root, spec.run_id) or {}, 0.0)
    else:
        progress.finished(spec, {"status": "waiting", "error": "its source runs have no result "
                                 "yet (busy in another process?); run the grid again"}, 0.0)


def _start(spec: RunSpec, root: Path, threads: int | None,
           data_dir: str | None) -> subprocess.Popen:
    for folder in ("specs", "logs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    spec_path = root / "specs" / f"{spec.run_id}.json"
    spec_path.write_text(json.dumps(spec.to_dict(), indent=1, sort_keys=True) + "\n")
    cmd = [sys.executable, "-m", "reference_trainers.experiments.worker", "--spec",
           str(spec_path), "--root", str(root)]
    env = dict(os.environ)
    if threads:
        cmd += ["--threads", str(threads)]
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[name] = str(threads)
    if data_dir:
        cmd += ["--data-dir", data_dir]
    log = open(root / "logs" / f"{spec.run_id}.log", "a", encoding="utf-8")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=_repo_root())
    finally:
        log.close()


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _crashed(root: Path, spec: RunSpec, code: int) -> dict[str, Any]:
    """The JSON of a worker that died without writing one (killed, out of memory)."""
    log = root / "logs" / f"{spec.run_id}.log"
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    write_result(root, {"run_id": spec.run_id, "spec": spec.to_dict(), "status": "failed",
                        "metrics": [], "error": f"worker exited with code {code} without a "
                                                f"result; log tail: {tail}"})
    return load_result(root, spec.run_id) or {}


def results_of(specs: Sequence[RunSpec], root: str | os.PathLike[str]
               ) -> list[tuple[RunSpec, dict[str, Any] | None]]:
    """(spec, result or None) for each spec as listed: a run shared by two cells of a suite
    (one full-data reference for two regimes) appears under both."""
    return [(s, load_result(Path(root), s.run_id)) for s in specs]

