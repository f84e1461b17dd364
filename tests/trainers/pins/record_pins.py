"""Behaviour pins of the four reference trainers (issue 16): what a cpu-tiny, one-process run of
CLIP / MoCo in PyTorch / JAX produces, recorded so a refactor can prove it changed nothing.

A pin holds, for every epoch: the metrics row (timing fields aside), the plan (its fingerprint,
a digest of its kept ids and of this rank's shard order) and digests of the ids and per-sample
losses the pruner was handed, in order; then the summary (timing aside) and digests of the
coreset and the planted-noise arrays. Runs go through the public command line
(`python -m reference_trainers.clip|moco [--framework jax]`), so the pins survive files moving.

Equality is exact and only meaningful on the machine and library versions that recorded them
(`machine` in each pin); tests/trainers/test_pins.py and tests/jax_trainers/test_pins_jax.py
skip with a message elsewhere.

Re-record (only when a change is MEANT to alter behaviour; say so in the commit):

    PYTHONPATH=$PWD python -m tests.trainers.pins.record_pins            # all four
    PYTHONPATH=$PWD python -m tests.trainers.pins.record_pins clip-jax   # one

Each run is its own process (JAX's threads and torch's forks stay apart), about 10-40 s each
on 2 cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import runpy
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from reference_trainers.common.host import cpu_name

PINS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PINS_DIR.parents[2]

# Fields of a metrics row / summary that measure time, not behaviour.
TIMING_FIELDS = frozenset({"seconds", "wall_seconds", "seconds_per_epoch"})

# Three epochs: warm-up (fixed at one), preparation, one mutation epoch (pruned), which is the
# last, so zero-shot / kNN and the linear probe run once. Planted noise exercises planted.py.
_COMMON = ["--num-train", "512", "--num-test", "200", "--batch-size", "64",
           "--scan-warmup-epochs", "1", "--eval-every", "0", "--epochs", "3", "--threads", "1",
           "--quiet"]
RUNS: dict[str, tuple[str, list[str]]] = {
    "clip-torch": ("reference_trainers.clip",
                   ["--preset", "cpu-tiny", "--mismatch-share", "0.1", *_COMMON]),
    "clip-jax": ("reference_trainers.clip",
                 ["--framework", "jax", "--preset", "cpu-tiny", "--mismatch-share", "0.1",
                  *_COMMON]),
    "moco-torch": ("reference_trainers.moco",
                   ["--preset", "cpu-tiny-moco", "--duplicate-share", "0.1", *_COMMON]),
    "moco-jax": ("reference_trainers.moco",
                 ["--framework", "jax", "--preset", "cpu-tiny-moco", "--duplicate-share", "0.1",
                  *_COMMON]),
}


def digest(array: Any) -> str:
    """sha256 (16 hex digits) of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(np.asarray(array))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def machine(cpuinfo: str | None = None) -> dict[str, str]:
    """What exact equality depends on: the CPU (its name and generation, `host.cpu_name`: two
    AMD EPYC generations both say "AMD EPYC" and round float32 differently), Python and the
    numeric libraries' versions. cpuinfo: the text of /proc/cpuinfo (read when None)."""
    cpu = cpu_name(cpuinfo)
    versions = {}
    for name in ("numpy", "numba", "torch", "jax", "jaxlib", "flax", "optax"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return {"cpu": cpu, "python": platform.python_version(), **versions}


@contextlib.contextmanager
def _watch_pruner(epochs: list[dict[str, Any]]) -> Iterator[None]:
    """Record every plan and every `record` call of ScanPruner while the block runs."""
    from scan_core import ScanPruner

    plan_epoch, record = ScanPruner.plan_epoch, ScanPruner.record

    def watched_plan(self, epoch):
        plan = plan_epoch(self, epoch)
        if not epochs or epochs[-1]["epoch"] != epoch:
            epochs.append({"epoch": epoch, "plan_fingerprint": plan.fingerprint,
                           "num_kept": plan.num_kept, "kept_ids": digest(plan.kept_ids),
                           "shard_order": digest(plan.shard(0, 1)), "_ids": [], "_losses": []})
        return plan

    def watched_record(self, ids, losses, *args, **kwargs):
        epochs[-1]["_ids"].append(np.array(ids, dtype=np.int64))
        epochs[-1]["_losses"].append(np.array(losses))
        return record(self, ids, losses, *args, **kwargs)

    ScanPruner.plan_epoch, ScanPruner.record = watched_plan, watched_record
    try:
        yield
    finally:
        ScanPruner.plan_epoch, ScanPruner.record = plan_epoch, record


def _run_cli(module: str, argv: list[str]) -> int:
    old_argv = sys.argv
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = old_argv
    return 0


def pin_of(name: str, out: Path) -> dict[str, Any]:
    """Run `name` (a key of RUNS) into the run directory `out` in this process; its pin."""
    module, argv = RUNS[name]
    epochs: list[dict[str, Any]] = []
    with _watch_pruner(epochs):
        code = _run_cli(module, [*argv, "--out", str(out)])
    if code != 0:
        raise RuntimeError(f"{name}: python -m {module} {' '.join(argv)} exited {code}")
    for e in epochs:
        ids, losses = e.pop("_ids"), e.pop("_losses")
        e["recorded_ids"] = digest(np.concatenate(ids)) if ids else None
        e["recorded_losses"] = digest(np.concatenate(losses, axis=-1)) if losses else None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    planted = out / "planted.npz"
    return {
        "run": f"python -m {module} {' '.join(argv)} --out DIR",
        "machine": machine(),
        "metrics": [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows],
        "plans": epochs,
        "summary": {k: v for k, v in summary.items() if k not in TIMING_FIELDS},
        "coreset": digest(np.load(out / "coreset.npy")),
        "planted": ({k: digest(v) for k, v in sorted(np.load(planted).items())}
                    if planted.exists() else None),
    }


def pin_path(name: str) -> Path:
    return PINS_DIR / f"{name}.json"


def load_pin(name: str) -> dict[str, Any]:
    return json.loads(pin_path(name).read_text())


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or list(RUNS)
    unknown = sorted(set(names) - set(RUNS) - {"--one"})
    if unknown:
        print(f"unknown pin {unknown}; choose from {sorted(RUNS)}", file=sys.stderr)
        return 2
    if names[0] == "--one":  # the child process: one run, the pin written
        with tempfile.TemporaryDirectory() as tmp:
            pin = pin_of(names[1], Path(tmp) / "run")
        pin_path(names[1]).write_text(json.dumps(pin, indent=1, sort_keys=True) + "\n")
        print(f"wrote {pin_path(names[1]).relative_to(REPO_ROOT)}")
        return 0
    for name in names:
        subprocess.run([sys.executable, "-m", "tests.trainers.pins.record_pins", "--one", name],
                       cwd=REPO_ROOT, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
