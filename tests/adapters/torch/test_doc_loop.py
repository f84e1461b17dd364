"""docs/embedding-torch.md's trainer runs as written: it trains, prunes, follows its LR
schedule to the end however much the epochs shrink, and resumes from its checkpoint with the
plans and weights of an uninterrupted run; and the same file runs under torchrun (gloo)."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "embedding-torch.md"


def _trainer_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "the doc should hold exactly one python block: the trainer"
    return blocks[0]


def _load_trainer() -> dict:
    namespace: dict = {"__name__": "train_clip_scan"}  # not __main__: main() does not run
    exec(compile(_trainer_source(), str(DOC), "exec"), namespace)
    return namespace


class _Killed(Exception):
    pass


def _comparable(log: list[dict]) -> list[tuple]:
    return [(r["epoch"], r["phase"], r["num_kept"], r["num_candidates"], r["warmup_ended_at"])
            for r in log]


def test_the_doc_trainer_trains_prunes_and_resumes(tmp_path, capsys):
    trainer = _load_trainer()
    progress: list[float] = []
    schedule = trainer["learning_rate"]

    def recording_schedule(p, base_lr, **kw):
        progress.append(p)
        return schedule(p, base_lr, **kw)

    trainer["learning_rate"] = recording_schedule
    model, pruner = trainer["train"](tmp_path / "uninterrupted")
    trainer["learning_rate"] = schedule
    n, epochs = 4096, 10  # train()'s defaults, as the doc runs it
    log = pruner.log
    assert pruner.next_epoch == epochs and len(log) == epochs
    assert log[3]["mean_loss"] < 0.5 * log[0]["mean_loss"], "the model did not train"
    assert any(r["phase"] == "mutate" and r["num_kept"] < n for r in log), "nothing was pruned"
    assert 0.05 < log[-1]["realised_saving"] < 0.5
    out = capsys.readouterr().out
    assert out.count("saved so far") == epochs
    # The LR schedule's progress never runs backwards and reaches the end of the run although
    # the mutation epochs were shorter.
    assert progress[0] == 0.0
    assert all(b > a for a, b in zip(progress, progress[1:]))
    last_kept, batch = log[-1]["num_kept"], 128
    assert progress[-1] >= (epochs - 1 + (last_kept - batch) / last_kept) / epochs
    assert schedule(1.0, 1.0) == pytest.approx(0.0, abs=1e-12)

    # Kill the job right after the checkpoint of epoch 4 (the first mutation epoch), restart.
    save = trainer["save_checkpoint"]

    def save_then_die(path, model, optimizer, pruner):
        save(path, model, optimizer, pruner)
        if pruner.next_epoch == 5:
            raise _Killed

    trainer["save_checkpoint"] = save_then_die
    with pytest.raises(_Killed):
        trainer["train"](tmp_path / "interrupted")
    trainer["save_checkpoint"] = save
    resumed_model, resumed = trainer["train"](tmp_path / "interrupted")
    assert f"resumed {tmp_path / 'interrupted' / 'checkpoint.pt'} at epoch 5" in \
        capsys.readouterr().out
    assert _comparable(resumed.log) == _comparable(log)
    assert [r["mean_loss"] for r in resumed.log] == pytest.approx(
        [r["mean_loss"] for r in log], rel=1e-5)
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed_model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after the resume")


def test_the_doc_trainer_runs_the_infobatch_rule_with_its_weights(tmp_path):
    trainer = _load_trainer()
    seen_weights = []
    clip = trainer["clip_loss"]

    def spying_clip_loss(*args, weights=None, **kw):
        seen_weights.append(weights)
        return clip(*args, weights=weights, **kw)

    trainer["clip_loss"] = spying_clip_loss
    _, pruner = trainer["train"](tmp_path / "infobatch", epochs=4, num_samples=1024,
                                 rule="infobatch")
    plan_weights = torch.cat(seen_weights)
    assert pruner.config.rule == "infobatch"
    assert any(r["num_kept"] < 1024 for r in pruner.log), "InfoBatch pruned nothing"
    assert (plan_weights > 1).any(), "no kept sample was re-weighted"
    assert set(plan_weights.unique().tolist()) <= {1.0, 1 / (1 - pruner.config.infobatch_prune_ratio)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_the_doc_trainer_runs_under_torchrun(tmp_path):
    script = tmp_path / "train_clip_scan.py"
    script.write_text(_trainer_source())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={_free_port()}", str(script), "--run-dir", str(tmp_path / "run"),
               "--epochs", "6", "--num-samples", "1024", "--batch-size", "64"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 6, output[-4000:]  # rank 0 only prints
    assert any("mutate" in line and "kept 1024/" not in line for line in lines), lines
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["pruner"]["world_size"] == 2 and state["pruner"]["next_epoch"] == 6
