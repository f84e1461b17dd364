"""Runs the parts, each in its own process under a time box, and writes the results.

Parent: `run_check(parts, out_dir, ...)` starts one child per part (`python -m
benchmarks.gpu_check.runner --child module:function ...`), kills its whole process group when
its time box runs out, and after every part rewrites results.json and results.md, so whatever
was measured survives a kill of the whole command. Time a part leaves unused goes to the next
ones (a bank); no part runs past the whole run's budget.

Child: imports the part, calls it with a PartContext, and appends each measured row to a
JSON-lines file as soon as it is measured. An exception is written as the part's error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.gpu_check import PartSpec

#: Seconds a part is asked to finish before its box closes (it checks ctx.left_s()).
GRACE_S = 8.0
#: A part is not started with less than this left in the whole run.
MIN_START_S = 5.0


@dataclasses.dataclass
class PartContext:
    """What a part gets: dry_run (tiny CPU shapes), deadline (time.monotonic() by which it
    should have returned), data_dir (the staged folder, may not exist), work_dir (scratch,
    shared by the parts of one run), and emit() to append one measured row."""

    name: str
    dry_run: bool
    deadline: float
    data_dir: pathlib.Path
    work_dir: pathlib.Path
    rows_path: pathlib.Path

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def optional_left_s(self) -> float:
        """Seconds left for work a part may skip: unlimited in a dry run, which must run every
        path (the part's time box still applies)."""
        return float("inf") if self.dry_run else self.left_s()

    def soft_deadline(self, reserve_s: float) -> float:
        """A time.monotonic() deadline `reserve_s` before the part's own (none in a dry run)."""
        return float("inf") if self.dry_run else self.deadline - reserve_s

    def emit(self, item: str, value: Any, unit: str = "", note: str = "", **extra: Any) -> None:
        """One row: `item` what was measured, `value` the number or text, `unit`, `note`;
        `extra` keys travel in results.json only."""
        row = {"item": item, "value": _plain(value), "unit": unit, "note": note,
               **{k: _plain(v) for k, v in extra.items()}}
        with open(self.rows_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{self.name}] {item}: {row['value']} {unit} {note}".rstrip(), flush=True)

    def interleaved_rounds(self, variants: Sequence[str], rounds: int,
                           run_block: Callable[[str], None], *,
                           reserve_s: float) -> dict[str, list[float]]:
        """Seconds of `run_block(variant)` per round and variant, the variants in turn, their
        order reversed every other round (so drift does not favour one); stops early, with a
        "rounds cut short" row, when fewer than `reserve_s` optional seconds are left. Raises
        when no round finished. `run_block` must wait for the device before it returns."""
        times: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(rounds):
            if self.optional_left_s() < reserve_s:
                self.emit("rounds cut short", r, note="time box")
                break
            for variant in (variants if r % 2 == 0 else variants[::-1]):
                start = time.perf_counter()
                run_block(variant)
                times[variant].append(time.perf_counter() - start)
        if not times[variants[0]]:
            raise RuntimeError("no round finished inside the time box")
        return times


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, floats rounded to 6 significant digits."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# -- parent ---------------------------------------------------------------------------------
def run_check(parts: Sequence[PartSpec], out_dir: str | os.PathLike, *, dry_run: bool,
              budget_s: float, data_dir: str | os.PathLike, command: str = "",
              env: dict[str, str] | None = None,
              work_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run `parts` in order; return (and write to out_dir) the results document.
    work_dir: the parts' scratch folder (default out_dir/work)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(work_dir) if work_dir is not None else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    log_path = out / "gpu_check.log"
    log_path.write_text("")
    start = time.monotonic()
    doc: dict[str, Any] = {
        "command": command, "dry_run": dry_run, "budget_s": budget_s,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "host": platform.node(), "python": platform.python_version(),
        "commit": _git_commit(), "parts": []}
    bank = 0.0
    for spec in parts:
        share = spec.dry_budget_s if dry_run else spec.budget_s
        left = budget_s - (time.monotonic() - start)
        entry: dict[str, Any] = {"name": spec.name, "title": spec.title, "rows": []}
        if left < MIN_START_S:
            entry.update(status="skipped", seconds=0.0,
                         error=f"not started: {left:.0f} s left of the {budget_s:.0f} s budget")
        else:
            box = min(share + bank, left)
            entry.update(_run_part(spec, box, out, work, log_path, dry_run, data_dir, env))
            bank = max(0.0, share + bank - entry["seconds"])
        doc["parts"].append(entry)
        doc["seconds"] = round(time.monotonic() - start, 1)
        _write(out, doc)
        print(f"== {spec.name}: {entry['status']} in {entry['seconds']:.1f} s"
              + (f" ({entry['error'].splitlines()[-1]})" if entry.get("error") else ""),
              flush=True)
    return doc


def _run_part(spec: PartSpec, box_s: float, out: pathlib.Path, work: pathlib.Path,
              log_path: pathlib.Path, dry_run: bool, data_dir: str | os.PathLike,
              env: dict[str, str] | None) -> dict[str, Any]:
    rows_path = work / f"{spec.name}.rows.jsonl"
    rows_path.write_text("")
    error_path = work / f"{spec.name}.error.txt"
    error_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.gpu_check.runner", "--child", spec.target,
           "--name", spec.name, "--rows", str(rows_path), "--error", str(error_path),
           "--deadline-s", str(max(1.0, box_s - GRACE_S)), "--data", str(data_dir),
           "--work", str(work)] + (["--dry-run"] if dry_run else [])
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    t0 = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== part {spec.name} (time box {box_s:.0f} s) =====\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=box_s)
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code, status = None, "timeout"
    entry: dict[str, Any] = {"status": status, "seconds": round(time.monotonic() - t0, 1),
                             "exit_code": code, "rows": _read_rows(rows_path)}
    if status == "timeout":
        entry["error"] = f"stopped at its time box of {box_s:.0f} s; rows are what it measured"
    elif status == "failed":
        entry["error"] = (error_path.read_text() if error_path.exists()
                          else f"exit code {code}; see gpu_check.log")
    return entry


def _kill_group(proc: subprocess.Popen) -> None:
    """Terminate the part's process group (its own children too), then kill what remains."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_rows(path: pathlib.Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut off by a kill
            continue
    return rows


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _write(out: pathlib.Path, doc: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "results.md").write_text(markdown(doc))


def markdown(doc: dict[str, Any]) -> str:
    """The results as one markdown table per run: a status row per part, then its rows."""
    mode = "dry run (CPU, tiny shapes)" if doc["dry_run"] else "GPU run"
    lines = [f"GPU check, {mode}: {doc['date_utc']} UTC, commit {doc['commit']}, "
             f"host {doc['host']}, Python {doc['python']}, {doc.get('seconds', 0):.0f} s of "
             f"a {doc['budget_s']:.0f} s budget.", "",
             f"Command: `{doc['command']}`" if doc["command"] else "", "",
             "| part | item | value | note |", "|---|---|---|---|"]
    for part in doc["parts"]:
        error = (part.get("error") or "").strip().splitlines()
        lines.append(f"| **{part['name']}** | {part['title']} | **{part['status']}** "
                     f"({part['seconds']:.0f} s) | {_cell(error[-1] if error else '')} |")
        for row in part["rows"]:
            value = f"{row['value']} {row.get('unit', '')}".strip()
            lines.append(f"| | {_cell(row['item'])} | {_cell(value)} | {_cell(row.get('note', ''))} |")
    return "\n".join(lines) + "\n"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# -- child ----------------------------------------------------------------------------------
def child_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.gpu_check.runner")
    parser.add_argument("--child", required=True, help="module:function of the part")
    parser.add_argument("--name", required=True)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--error", required=True)
    parser.add_argument("--deadline-s", type=float, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    ctx = PartContext(name=args.name, dry_run=args.dry_run,
                      deadline=time.monotonic() + args.deadline_s,
                      data_dir=pathlib.Path(args.data), work_dir=pathlib.Path(args.work),
                      rows_path=pathlib.Path(args.rows))
    module_name, _, function = args.child.partition(":")
    try:
        getattr(importlib.import_module(module_name), function)(ctx)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which goes on
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        pathlib.Path(args.error).write_text(f"{type(exc).__name__}: {exc}\n{text}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
