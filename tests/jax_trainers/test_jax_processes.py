"""The JAX trainers under `jax.distributed`: two real processes on 127.0.0.1 (one CPU device
each, gloo collectives), launched as the docs say (`--coordinator HOST:PORT --num-processes 2
--process-id I`), on a small real subset of Fashion-MNIST.

Invariants held here:
- Two processes with a per-process batch of 32 run the plan a one-process run with a batch of
  64 runs: before pruning the same plans, steps and losses (to float summation order); every
  row's steps and samples are DistributedSampler's arithmetic over the plan's kept ids.
- From the preparation on, SCAN's per-batch candidates come from each process's own batch
  (as under torchrun: the store refuses another process count for this reason), so the runs
  then agree statistically, not sample for sample: within the tolerances below.
- Process 0 alone writes the run directory and the closing line; both processes exit 0.
- Stopped after 3 of 5 epochs and resumed with two processes: the uninterrupted run's plans,
  losses, store log and accuracy.
- A resume with another process count is refused, by every process, naming both counts; an
  error at start on one process stops every process (no one waits in a collective).
- Each process's augmentation draws are those one process gives the global batch.

The resume and MoCo runs are marked slow (two and one more launches of two processes: 76-82 s
and 47 s measured on the 2 shared cores, load average about 5); the rest adds about 70 s there,
most of it the two-process run (the one-process run it is compared with is
test_jax_clip_train.py's, conftest.py).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR  # noqa: E402
from reference_trainers.jax import clip as jax_clip  # noqa: E402
from tests.jax_trainers.conftest import CLIP_ARGS  # noqa: E402

needs_data = pytest.mark.skipif(
    not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
pytestmark = [needs_data]

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600  # a launch took over 300 s on the 2 shared cores at load average 11
# The one-process run's batch of 64, as two processes' batches of 32.
TWO = [a if a != "64" else "32" for a in CLIP_ARGS] + ["--epochs", "5"]
MOCO = ["--framework", "jax", "--preset", "cpu-tiny-moco", "--num-train", "256", "--num-test",
        "200", "--batch-size", "32", "--scan-warmup-epochs", "1", "--epochs", "3", "--threads",
        "1", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(trainer: str, args: list[str], world: int = 2) -> list[tuple[int, str]]:
    """`python -m reference_trainers.<trainer> ARGS --coordinator 127.0.0.1:PORT
    --num-processes WORLD --process-id I` for every I; (exit code, output) per process.

    No persistent compilation cache: with one shared by the two processes (JAX_COMPILATION_
    CACHE_DIR), a resumed pair failed twice in gloo with "Received data size doesn't match
    expected size" (a collective mismatch), while every run that compiled afresh passed."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", f"reference_trainers.{trainer}", *args, "--coordinator",
         f"127.0.0.1:{port}", "--num-processes", str(world), "--process-id", str(i)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(world)]
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out) for p, out in zip(procs, outputs)]


def _ok(done: list[tuple[int, str]]) -> list[str]:
    assert all(code == 0 for code, _ in done), "\n".join(out[-3000:] for _, out in done)
    return [out for _, out in done]


def _rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _store(out):
    from scan_core import LossStore
    meta = LossStore.read_meta(Path(out) / "scan.zarr")
    return meta, LossStore.open(Path(out) / "scan.zarr", meta, writable=False).load_latest()


def test_each_process_augments_its_rows_as_one_process_augments_the_global_batch():
    """augment.py's share=(rank, world): the rows rank::world of one process's global batch
    (DistributedSampler's interleaving) get the same crops, and every generator ends in step."""
    from reference_trainers.jax.augment import random_crop_flip, two_crops

    images = np.random.default_rng(1).integers(0, 256, (8, 1, 28, 28), dtype=np.uint8)
    one = np.random.default_rng(0)
    whole, pair = random_crop_flip(images, one), two_crops(images, one)
    for rank in range(2):
        rng = np.random.default_rng(0)
        mine = random_crop_flip(images[rank::2], rng, share=(rank, 2))
        np.testing.assert_array_equal(mine, whole[rank::2])
        for view, full in zip(two_crops(images[rank::2], rng, share=(rank, 2)), pair):
            np.testing.assert_array_equal(view, full[rank::2])
        assert rng.bit_generator.state == one.bit_generator.state


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("two-processes")
    logs = _ok(launch("clip", TWO + ["--out", str(out)]))
    return out, logs


@pytest.mark.distributed
def test_two_processes_run_the_plan_of_one_process_with_their_global_batch(
        two_process_run, clip_one_process_run):
    out, logs = two_process_run
    assert "zero-shot top-1" in logs[0] and "zero-shot top-1" not in logs[1]
    assert "epoch   4" not in logs[1]                 # process 0 alone prints epoch lines
    for name in ("config.json", "metrics.jsonl", "summary.json", "planted.npz", "coreset.npy",
                 "scan.zarr"):
        assert (out / name).exists(), name
    assert len(list((out / "checkpoints").glob("epoch_*.npz"))) == 2
    assert _store(out)[0]["world_size"] == 2
    two, one = _rows(out), _rows(clip_one_process_run)
    assert [r["epoch"] for r in two] == list(range(5))
    assert [r["phase"] for r in two] == [r["phase"] for r in one]
    assert two[-1]["num_kept"] < 768
    for r in two:
        shard = -(-r["num_kept"] // 2)                # DistributedSampler: ceil(kept / 2) each
        assert r["world_size"] == 2
        assert r["steps"] == -(-shard // 32) and r["samples"] == 2 * shard
        # Per-batch candidates: at most floor(rho B) per end of every process's batch.
        assert r["num_candidates"] <= 2 * 12 * 2 * int(0.3 * 32)
    for a, b in zip(one[:2], two[:2]):                # warm-up and preparation: the same batches
        assert (a["num_kept"], a["steps"], a["samples"]) == (b["num_kept"], b["steps"],
                                                             b["samples"])
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["mean_loss"] == pytest.approx(a["mean_loss"], rel=1e-4)
    # After it, each run prunes its own candidates: the same schedule, close results.
    assert [r["rho_cur"] for r in two] == [r["rho_cur"] for r in one]
    for a, b in zip(one[2:], two[2:]):
        assert b["kept_share"] == pytest.approx(a["kept_share"], abs=0.05)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
    s1 = json.loads((clip_one_process_run / "summary.json").read_text())
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["zero_shot_top1"] == pytest.approx(s1["zero_shot_top1"], abs=0.05)
    assert s2["linear_probe_top1"] == pytest.approx(s1["linear_probe_top1"], abs=0.05)
    assert s2["realised_pruned_share"] == pytest.approx(s1["realised_pruned_share"], abs=0.03)
    assert s2["sample_visits"] == sum(r["samples"] for r in two)


@pytest.mark.slow  # two more launches of two processes
@pytest.mark.distributed
def test_two_processes_stopped_and_resumed_equal_the_uninterrupted_run(two_process_run, tmp_path):
    full, _ = two_process_run
    out = tmp_path / "resumed"
    _ok(launch("clip", TWO + ["--out", str(out), "--stop-after", "3"]))
    assert [r["epoch"] for r in _rows(out)] == [0, 1, 2]
    _ok(launch("clip", TWO + ["--out", str(out), "--resume"]))
    a, b = _rows(full), _rows(out)
    assert [r["epoch"] for r in b] == list(range(5))
    for ra, rb in zip(a, b):
        assert (ra["phase"], ra["num_kept"], ra["num_candidates"], ra["steps"],
                ra["samples"]) == (rb["phase"], rb["num_kept"], rb["num_candidates"],
                                   rb["steps"], rb["samples"])
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-6)
    assert _store(full)[1]["log"] == _store(out)[1]["log"]
    for key in ("red_bits", "ill_bits"):
        np.testing.assert_array_equal(_store(full)[1][key], _store(out)[1][key])
    sa = json.loads((full / "summary.json").read_text())
    sb = json.loads((out / "summary.json").read_text())
    assert sb["zero_shot_top1"] == pytest.approx(sa["zero_shot_top1"], abs=1e-9)


@pytest.mark.distributed
def test_a_resume_with_another_process_count_is_refused_by_every_process(
        two_process_run, clip_one_process_run, tmp_path, capsys):
    two = tmp_path / "two"
    shutil.copytree(two_process_run[0], two)
    capsys.readouterr()
    assert jax_clip.main(TWO + ["--out", str(two), "--resume"]) == 2       # one process
    err = capsys.readouterr().err
    assert "written by 2 process(es)" in err and "runs 1" in err
    assert "--num-processes 2" in err
    one = tmp_path / "one"
    shutil.copytree(clip_one_process_run, one)
    done = launch("clip", CLIP_ARGS + ["--epochs", "5", "--out", str(one), "--resume"])
    for code, log in done:                                               # two processes
        assert code == 2, log[-3000:]
        assert "written by 1 process(es), this resume runs 2" in log
        assert "--num-processes 1" in log


@pytest.mark.distributed
def test_an_error_on_one_process_at_start_stops_every_process(two_process_run, tmp_path):
    """A new run into a run directory that holds one: process 0's run directory refuses (only
    process 0 writes it); process 1 learns so before any collective instead of waiting."""
    out = tmp_path / "taken"
    shutil.copytree(two_process_run[0], out)
    (code0, log0), (code1, log1) = launch("clip", TWO + ["--out", str(out)])
    assert code0 == 2 and "already holds a run" in log0, log0[-3000:]
    assert code1 == 2 and "starting the run failed on process(es) [0]" in log1, log1[-3000:]


def test_process_flags_without_a_coordinator_are_refused(tmp_path, capsys):
    for extra in (["--num-processes", "2"], ["--coordinator", "127.0.0.1:1", "--process-id",
                                             "2", "--num-processes", "2"],
                  ["--coordinator", "auto", "--process-id", "0"]):
        assert jax_clip.main(CLIP_ARGS + extra + ["--out", str(tmp_path / "x")]) == 2
        assert "--coordinator" in capsys.readouterr().err


@pytest.fixture(scope="module")
def moco_two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("moco-two-processes")
    return out, _ok(launch("moco", MOCO + ["--out", str(out)]))


@pytest.mark.slow  # one more launch of two processes
@pytest.mark.distributed
def test_moco_trains_in_two_processes(moco_two_process_run):
    out, logs = moco_two_process_run
    assert "kNN top-1" in logs[0] and "kNN top-1" not in logs[1]
    rows = _rows(out)
    assert [r["phase"] for r in rows] == ["warmup", "prepare", "mutate"]
    for r in rows:
        shard = -(-r["num_kept"] // 2)
        full, rest = divmod(shard, 32)
        assert r["world_size"] == 2 and r["samples"] == 2 * shard
        assert r["steps"] == full + (rest > 1)      # a lone last sample joins the batch before
    assert rows[-1]["num_kept"] < 256
    summary = json.loads((out / "summary.json").read_text())
    assert summary["knn_top1"] > 0.2 and summary["linear_probe_top1"] > 0.2
    assert len(list((out / "checkpoints").glob("epoch_*.npz"))) == 2


def _stop_at_every_boundary(trainer: str, args: list[str], out: Path, epochs: int) -> None:
    for epoch in range(epochs):
        _ok(launch(trainer, args + ["--out", str(out), "--stop-after", "1"]
                   + (["--resume"] if epoch else [])))


def _assert_same_run(full: Path, out: Path, headline: tuple[str, ...]) -> None:
    """Every metrics row equal but its timing, the store's log and candidate bitmaps, the
    coreset and the headline accuracies."""
    timing = {"seconds", "wall_seconds"}
    a, b = _rows(full), _rows(out)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in timing} == \
            {k: v for k, v in rb.items() if k not in timing}, f"epoch {ra['epoch']} differs"
    assert _store(full)[1]["log"] == _store(out)[1]["log"]
    for key in ("red_bits", "ill_bits"):
        np.testing.assert_array_equal(_store(full)[1][key], _store(out)[1][key])
    np.testing.assert_array_equal(np.load(full / "coreset.npy"), np.load(out / "coreset.npy"))
    sa = json.loads((full / "summary.json").read_text())
    sb = json.loads((out / "summary.json").read_text())
    for key in headline:
        assert sa[key] is not None and sa[key] == sb[key], key


@pytest.mark.slow  # four launches of two processes
@pytest.mark.distributed
def test_clip_two_processes_stopped_at_every_epoch_equal_the_uninterrupted_run(tmp_path):
    """Issue 15's 'done when': stopped and resumed at every epoch boundary, the same run. The
    processes share one augmentation generator (augment.py's `share`), so process 0's
    checkpoint holds every process's state. Three epochs (warm-up, preparation, pruning) of
    384 samples keep it to four launches."""
    args = [a if a != "768" else "384" for a in TWO[:-2]] + ["--epochs", "3"]
    full = tmp_path / "full"
    _ok(launch("clip", args + ["--out", str(full)]))
    out = tmp_path / "stepped"
    _stop_at_every_boundary("clip", args, out, epochs=3)
    assert [r["phase"] for r in _rows(out)] == ["warmup", "prepare", "mutate"]
    _assert_same_run(full, out, ("zero_shot_top1", "linear_probe_top1"))


@pytest.mark.slow  # three more launches of two processes
@pytest.mark.distributed
def test_moco_two_processes_stopped_at_every_epoch_equal_the_uninterrupted_run(
        moco_two_process_run, tmp_path):
    out = tmp_path / "stepped"
    _stop_at_every_boundary("moco", MOCO, out, epochs=3)
    _assert_same_run(moco_two_process_run[0], out, ("knn_top1", "linear_probe_top1"))
