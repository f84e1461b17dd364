"""torchrun helpers for the 2-rank trainer tests: launch a run, and compare a stopped and
resumed run with one that never stopped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

TIMING = {"seconds", "wall_seconds"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(module: str, args: list[str], *, ranks: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
         "--master_port", str(free_port()), "-m", module, *args],
        capture_output=True, text=True, timeout=600, env=env)


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def store_log(out: Path) -> list[dict]:
    from scan_core import LossStore
    store = LossStore.open(Path(out) / "scan.zarr", LossStore.read_meta(Path(out) / "scan.zarr"),
                           writable=False)
    return store.load_latest()["log"]


def stop_and_resume(module: str, args: list[str], out: Path, stops: list[int]) -> None:
    """Run with --stop-after stops[0], then --resume --stop-after stops[1], ..., then --resume
    to the end: e.g. stops [1, 1] stops at the first two epoch boundaries of a 3-epoch run."""
    for k, stop in enumerate([*stops, None]):
        done = torchrun(module, args + ["--out", str(out)] + (["--resume"] if k else [])
                        + ([] if stop is None else ["--stop-after", str(stop)]))
        assert done.returncode == 0, done.stderr[-3000:]


def assert_same_run(a: Path, b: Path, headline: tuple[str, ...]) -> None:
    """Every metrics row equal but its timing, the store's epoch log (the plans) equal, the
    coreset and the final headline accuracies equal."""
    import numpy as np

    ra, rb = rows(a), rows(b)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb]
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k not in TIMING} == \
            {k: v for k, v in y.items() if k not in TIMING}, f"epoch {x['epoch']} differs"
    assert store_log(a) == store_log(b)
    np.testing.assert_array_equal(np.load(Path(a) / "coreset.npy"),
                                  np.load(Path(b) / "coreset.npy"))
    sa, sb = (json.loads((Path(p) / "summary.json").read_text()) for p in (a, b))
    for key in headline:
        assert sa[key] is not None and sa[key] == sb[key], key
