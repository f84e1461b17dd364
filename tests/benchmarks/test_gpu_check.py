"""The GPU check (benchmarks/gpu_check, issue 19) on the CPU: its runner's time boxes and
failure reporting with stand-in parts, its helpers, the staging script's pure pieces, and the
whole check's --dry-run, so that nothing in it breaks before a GPU comes."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.gpu_check import PARTS, PartSpec
from benchmarks.gpu_check.runner import markdown, run_check

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(ROOT)}


def fake(name: str, function: str, budget_s: float) -> PartSpec:
    return PartSpec(name, f"tests.benchmarks.fake_parts:{function}", budget_s, budget_s, name)


# -- runner ---------------------------------------------------------------------------------
def test_a_hung_part_is_stopped_at_its_box_a_failing_part_reported_and_the_rest_run(tmp_path):
    parts = [fake("hangs", "hang", 4), fake("fails", "fail", 30), fake("works", "ok", 30)]
    t0 = time.monotonic()
    doc = run_check(parts, tmp_path, dry_run=True, budget_s=120, data_dir=tmp_path, env=ENV)
    elapsed = time.monotonic() - t0
    assert [p["status"] for p in doc["parts"]] == ["timeout", "failed", "ok"]
    hung, failed, worked = doc["parts"]
    assert 4 <= hung["seconds"] < 20 and elapsed < 90
    assert [r["item"] for r in hung["rows"]] == ["before the hang"]  # kept though killed
    assert "time box of 4 s" in hung["error"]
    assert failed["error"].startswith("ValueError: planted failure 7")
    assert [r["item"] for r in failed["rows"]] == ["before the failure"]
    assert failed["exit_code"] == 1
    assert worked["rows"] == [{"item": "answer", "value": 42, "unit": "units",
                               "note": "a | pipe"}]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))
    table = (tmp_path / "results.md").read_text()
    assert "| **hangs** | hangs | **timeout** (" in table
    assert "| | answer | 42 units | a \\| pipe |" in table  # pipes escaped, table intact
    assert "planted failure 7" in table
    assert "[hangs] before the hang" in (tmp_path / "gpu_check.log").read_text()


def test_time_a_part_leaves_goes_to_the_next(tmp_path):
    parts = [fake("quick", "sleep_a_little", 30), fake("next", "report_deadline", 10)]
    doc = run_check(parts, tmp_path, dry_run=True, budget_s=200, data_dir=tmp_path, env=ENV)
    left = doc["parts"][1]["rows"][0]["value"]
    # Its own 10 s minus the 8 s grace leave 2 s; with the first part's unused ~28 s, ~30 s.
    assert left > 15, left


def test_no_part_starts_past_the_whole_budget(tmp_path):
    doc = run_check([fake("a", "ok", 30), fake("b", "ok", 30)], tmp_path, dry_run=True,
                    budget_s=2, data_dir=tmp_path, env=ENV)
    assert [p["status"] for p in doc["parts"]] == ["skipped", "skipped"]
    assert "2 s budget" in doc["parts"][0]["error"]
    assert "**skipped**" in markdown(doc)


def test_parts_are_the_seven_of_the_issue_in_order_within_eight_minutes():
    from benchmarks.gpu_check import BUDGET_S

    assert [p.name for p in PARTS] == ["env", "clip", "scan_cost", "nccl", "trainer", "moco",
                                       "jax", "jax_vs_torch"]
    assert BUDGET_S <= 480 and sum(p.budget_s for p in PARTS) <= BUDGET_S


# -- helpers --------------------------------------------------------------------------------
def _oom_above(limit: int, calls: list[int]):
    import torch

    def try_batch(batch: int) -> None:
        calls.append(batch)
        if batch > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    return try_batch


def test_largest_batch_doubles_then_bisects():
    from benchmarks.gpu_check.torch_steps import largest_batch

    calls: list[int] = []
    fits, fails = largest_batch(_oom_above(700, calls), 64, 4096, 64, float("inf"))
    assert calls == [64, 128, 256, 512, 1024, 768, 640]
    assert (fits, fails) == (640, 768)


@given(limit=st.integers(1, 5000), start=st.sampled_from([16, 64, 256]),
       multiple=st.sampled_from([8, 16]))
def test_largest_batch_never_reports_a_batch_that_ran_out(limit, start, multiple):
    from benchmarks.gpu_check.torch_steps import largest_batch

    calls: list[int] = []
    fits, fails = largest_batch(_oom_above(limit, calls), start, 4096, multiple, float("inf"))
    assert fits == max([0] + [b for b in calls if b <= limit]) and fits <= limit
    assert fails is None or fails > limit
    assert fits > 0 or start > limit
    assert fails is not None or fits * 2 > 4096  # stopped by the cap, never silently
    assert len(calls) <= 12


def test_largest_batch_reraises_what_is_not_out_of_memory():
    from benchmarks.gpu_check.torch_steps import is_oom, largest_batch

    def broken(batch: int) -> None:
        raise ValueError(f"shape mismatch at {batch}")

    with pytest.raises(ValueError, match="shape mismatch at 64"):
        largest_batch(broken, 64, 4096, 64, float("inf"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("CUDA error: an illegal memory access"))


def test_generated_fashion_mnist_loads_as_fashion_mnist(tmp_path):
    from benchmarks.gpu_check.part_trainer import write_generated_fmnist
    from reference_trainers.common.data import load_fashion_mnist

    write_generated_fmnist(tmp_path, num_train=200, num_test=50)
    splits = load_fashion_mnist(tmp_path)
    assert splits.train_images.shape == (200, 28, 28) and splits.test_images.shape == (50, 28, 28)
    assert set(np.unique(splits.train_labels)) == set(range(10))
    means = np.stack([splits.train_images[splits.train_labels == c].mean(0) for c in range(10)])
    assert np.abs(means[:, None] - means[None]).mean(axis=(2, 3))[~np.eye(10, dtype=bool)].min() > 10


# -- staging --------------------------------------------------------------------------------
def test_staging_resolves_requirements_that_hold_on_the_device():
    from benchmarks.stage_gpu_check import missing, needed

    reqs = ["donfig>=0.8", "google-crc32c>=1.5", "numcodecs>=0.14", "numpy>=2.0",
            "typer; extra == 'cli'", "tomli; python_version < '3.11'",
            "pywin32; sys_platform == 'win32'", "Msgspec>=0.19"]
    assert needed(reqs) == ["donfig", "google-crc32c", "numcodecs", "numpy", "msgspec"]
    assert missing({"zarr.whl": reqs}, staged=["donfig", "google_crc32c", "numcodecs"]) == \
        {"zarr.whl": ["msgspec"]}
    assert missing({"zarr.whl": reqs}, staged=["donfig", "google_crc32c", "numcodecs",
                                              "msgspec"]) == {}


def test_staged_fashion_mnist_is_a_prefix_of_the_source(tmp_path):
    from benchmarks.gpu_check.part_trainer import write_generated_fmnist
    from benchmarks.stage_gpu_check import stage_fashion_mnist
    from reference_trainers.common.data import load_fashion_mnist

    write_generated_fmnist(tmp_path / "src", num_train=120, num_test=40)
    counts = stage_fashion_mnist(str(tmp_path / "src"), tmp_path / "dst", num_train=100,
                                 num_test=500)
    assert counts == {"num_train": 100, "num_test": 40}
    src, dst = load_fashion_mnist(tmp_path / "src"), load_fashion_mnist(tmp_path / "dst")
    assert np.array_equal(dst.train_images, src.train_images[:100])
    assert np.array_equal(dst.train_labels, src.train_labels[:100])
    assert np.array_equal(dst.test_images, src.test_images)


def test_staged_folder_is_ignored_by_git():
    done = subprocess.run(["git", "check-ignore", "-q", ".gpu-stage/wheels/x.whl"], cwd=ROOT)
    assert done.returncode == 0


# -- the whole check, dry -------------------------------------------------------------------
def test_dry_run_runs_every_part_on_the_cpu(tmp_path):
    """`python -m benchmarks.gpu_check --dry-run`: every part ok, with the rows it exists for."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=900)
    doc = json.loads((tmp_path / "results.json").read_text())
    status = {p["name"]: (p["status"], p.get("error", "")[-400:]) for p in doc["parts"]}
    assert done.returncode == 0, (status, done.stderr[-2000:])
    assert all(s == "ok" for s, _ in status.values()), status
    rows = {p["name"]: {r["item"]: r for r in p["rows"]} for p in doc["parts"]}

    assert rows["env"]["zarr store round trip"]["value"] == "ok"
    speeds = [r for r in rows["clip"].values() if r["unit"] == "images/s"]
    assert {r["compiled"] for r in speeds} == {False, True}
    assert all(r["value"] > 0 and r["steps"] >= 1 for r in speeds)
    assert rows["clip"]["ViT-B-32 largest batch (eager)"]["value"] == 8  # the dry cap
    for variant in ("scan", "scan_late"):
        assert rows["scan_cost"][f"{variant}: samples recorded"]["value"] > 0
        assert isinstance(rows["scan_cost"][f"overhead, {variant}"]["value"], float)
    assert sum(r["value"] == "equal" for r in rows["nccl"].values()) == 8
    phases = [r["phase"] for r in rows["trainer"].values() if "phase" in r]
    assert phases == ["warmup", "prepare", "mutate", "mutate", "mutate"]
    kept = [r["kept_share"] for r in rows["trainer"].values() if r.get("phase") == "mutate"]
    assert all(0 < k < 1 for k in kept)
    assert "mutation epochs: time saved / visits pruned" in rows["trainer"]
    assert next(iter(rows["moco"].values()))["value"] > 0
    assert {"JAX overhead, recorder", "JAX overhead, recorder_unbounded"} <= set(rows["jax"])
    gaps = [r["gap"] for item, r in rows["jax_vs_torch"].items() if "(highest)" in item]
    assert len(gaps) == 2 and max(gaps) <= 1e-5
    table = (tmp_path / "results.md").read_text()
    assert all(f"| **{p.name}** |" in table for p in PARTS)


def test_the_lease_command_in_the_docs_names_what_exists():
    """docs/benchmarks.md and docs/gpu-presets.md give the device tool's call; its script, its
    carried folder (git-ignored, the staging script's and the check's default) must be real."""
    import re

    from benchmarks.gpu_check.__main__ import main  # noqa: F401 (the module the script runs)

    call = 'run(command="bash benchmarks/gpu_check/device.sh", carry=[".gpu-stage"], timeout_s=560)'
    for doc in ("docs/benchmarks.md", "docs/gpu-presets.md"):
        assert call in (ROOT / doc).read_text(), doc
    script = (ROOT / "benchmarks/gpu_check/device.sh").read_text()
    assert "STAGE=${GPU_CHECK_STAGE:-.gpu-stage}" in script
    assert re.search(r'--dest", default="\.gpu-stage"',
                     (ROOT / "benchmarks/stage_gpu_check.py").read_text())
    assert '"--data", default=".gpu-stage"' in (ROOT / "benchmarks/gpu_check/__main__.py").read_text()
    timeout = int(re.search(r"timeout_s=(\d+)", call).group(1))
    from benchmarks.gpu_check import BUDGET_S

    assert BUDGET_S + 30 <= timeout <= 600  # the check, its installs, and the tool's limit
