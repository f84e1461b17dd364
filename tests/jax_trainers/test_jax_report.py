"""`--report-to tensorboard` for the JAX CLIP trainer: common/tb_report.py writes its event
files with the tensorboard package's own writer, so the JAX trainer reports without torch (the
run itself is checked in test_jax_user_eval.py, slow)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("jax")

ROOT = pathlib.Path(__file__).parents[2]


def test_the_tensorboard_reporter_writes_readable_scalars_without_torch(tmp_path):
    pytest.importorskip("tensorboard")
    code = f"""
import pathlib, sys
from reference_trainers.common.tb_report import open_reporter
reporter = open_reporter("tensorboard", pathlib.Path({str(tmp_path)!r}), rank=0,
                         rows=[{{"steps": 5}}])  # a resume after 5 steps
for loss in (2.0, 1.5):
    reporter.step(loss=loss, lr=0.1, kept_share=0.75, samples=16)
reporter.epoch({{"epoch": 1, "phase": "mutate", "num_kept": 12, "zero_shot_top5": 0.5}})
reporter.close()
assert 'torch' not in sys.modules and 'tensorflow' not in sys.modules, 'imported a framework'
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(5, 2.0), (6, 1.5)]
    assert [(e.step, e.value) for e in acc.Scalars("train/kept_share")] == [(5, 0.75), (6, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("scan/phase")] == [(1, 2.0)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/zero_shot_top5")] == [(1, 0.5)]


def test_an_unknown_reporter_is_refused_before_the_jax_run_writes_anything(tmp_path, capsys):
    from reference_trainers.jax import clip as jax_clip

    out = tmp_path / "run"
    assert jax_clip.main(["--framework", "jax", "--preset", "cpu-tiny", "--quiet",
                          "--report-to", "wandb", "--out", str(out)]) == 2
    assert "--report-to wandb: wandb is not supported" in capsys.readouterr().err
    assert not (out / "config.json").exists()
