"""What every benchmark script here shares: the machine it ran on, the process's memory
readings, and the table it writes between its markers in docs/benchmarks.md.

Each script prints its table and, with --write-docs, replaces the text between
`<!-- NAME:begin -->` and `<!-- NAME:end -->` (`publish`), so docs/benchmarks.md always says
which command and which machine produced a number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"


def proc_status_kib(field: str) -> int:
    """A `Vm*` field of /proc/self/status, in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def machine() -> dict[str, str]:
    """The commit (and whether scan_core has uncommitted changes), cores, CPU, RAM and the
    numeric libraries' versions: what a benchmark's number depends on."""
    from reference_trainers.common.host import cpu_name
    model = cpu_name()
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    import numba

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()
    dirty = git("status", "--porcelain", "--", "scan_core")
    return {"commit": git("rev-parse", "--short", "HEAD") + (
                " + uncommitted scan_core changes" if dirty else ""),
            "nproc": str(os.cpu_count()), "cpu": model, "ram_gib": f"{mem_kib / 2**20:.1f}",
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__}


def command_and_machine(command: str, info: dict[str, str]) -> list[str]:
    """The first lines of a benchmark's table: the command, then the `machine()` it ran on."""
    return [f"Command: `{command}`", "",
            f"Machine: {info['nproc']} cores ({info['cpu']}), {info['ram_gib']} GiB RAM; Python "
            f"{info['python']}, numpy {info['numpy']}, numba {info['numba']}; scan_core at "
            f"{info['commit']}."]


def write_docs(block: str, begin: str, end: str, path: Path = DOCS) -> None:
    """Replace the text between the `begin` and `end` marker lines of docs/benchmarks.md."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} lacks the markers {begin!r} / {end!r}; add them where the "
                         "table should go.")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{block}\n{end}{tail}")


def bench_parser(doc: str, *, num_samples: int, batch_size: int) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: --num-samples, --batch-size, --seed, --write-docs;
    the description is the first paragraph of `doc` (the script's docstring)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=num_samples)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the table into docs/benchmarks.md")
    return parser


def publish(block: str, name: str, *, write_docs_too: bool) -> None:
    """Print a benchmark's table; with write_docs_too, also put it between the
    `<!-- name:begin -->` and `<!-- name:end -->` markers of docs/benchmarks.md."""
    print(block)
    if write_docs_too:
        write_docs(block, f"<!-- {name}:begin -->", f"<!-- {name}:end -->")


TIMING_FLAGS = ("--eval-every", "0", "--probe-every", "0", "--threads", "1", "--quiet")


def trainer_rows(argv: list[str]) -> list[dict]:
    """Run a trainer in a subprocess of this checkout (`python ARGV --out <temporary run>`,
    e.g. ["-m", "reference_trainers.clip", ...]) for timing: no evaluation, one thread, quiet
    (TIMING_FLAGS). Return its metrics.jsonl rows; a failed run stops the benchmark with the
    trainer's last stderr."""
    with tempfile.TemporaryDirectory() as run:
        cmd = [sys.executable, *argv, *TIMING_FLAGS, "--out", str(Path(run) / "run")]
        done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            raise SystemExit(f"the trainer failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
        lines = (Path(run) / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
