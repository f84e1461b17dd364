"""common/loop.py: the steps every trainer's train() calls in its own epoch loop."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reference_trainers.common.loop import EpochLog, command_line, evaluation_due, framework_of
from reference_trainers.common.rundir import RunDir


@dataclasses.dataclass
class _Cfg:
    epochs: int = 6
    eval_every: int = 0
    probe_every: int = 0


@pytest.mark.parametrize("eval_every, probe_every, due", [
    (0, 0, {5: (True, True)}),
    (2, 0, {1: (True, False), 3: (True, False), 5: (True, True)}),
    (0, 3, {2: (True, True), 5: (True, True)}),
    (2, 3, {1: (True, False), 2: (True, True), 3: (True, False), 5: (True, True)}),
])
def test_evaluation_is_due_every_k_epochs_and_at_the_last_with_the_probe(eval_every,
                                                                          probe_every, due):
    cfg = _Cfg(eval_every=eval_every, probe_every=probe_every)
    assert {e: evaluation_due(cfg, e) for e in range(6) if evaluation_due(cfg, e)[0]} == due
    assert all(evaluation_due(cfg, e) == (False, False) for e in range(6) if e not in due)


class _Pruner:
    next_epoch = 2


class _Summary:
    pruned_share = 0.25

    def as_dict(self):
        return {"epoch": 2, "phase": "mutate"}


@pytest.mark.parametrize("stop_after, epochs", [(None, [2, 3, 4, 5]), (1, [2]), (9, [2, 3, 4, 5])])
def test_the_epochs_left_start_at_the_pruners_next_and_stop_after_a_slice(tmp_path, stop_after,
                                                                          epochs):
    log = EpochLog(RunDir(tmp_path), rank=0, world=1, wall_seconds=0.0)
    assert list(log.epochs(_Cfg(), _Pruner(), stop_after)) == epochs


@pytest.mark.parametrize("rank", [0, 1])
def test_a_row_adds_the_clock_and_only_rank_0_writes_and_prints_it(tmp_path, capsys, rank):
    run_dir = RunDir(tmp_path)
    log = EpochLog(run_dir, rank=rank, world=2, wall_seconds=10.0)
    for _ in log.epochs(_Cfg(epochs=3), _Pruner(), None):
        log.stop_clock()
        row = log.write(_Summary(), {"steps": 4}, {"knn_top1": 0.5},
                        line=lambda r: f"line {r['epoch']}", note="a note")
    assert row == {"epoch": 2, "phase": "mutate", "steps": 4, "knn_top1": 0.5,
                   "kept_share": 0.75, "seconds": log.seconds, "wall_seconds": 10.0 + log.seconds,
                   "world_size": 2}
    assert log.row == row and 0.0 <= log.seconds < 5.0
    written = (tmp_path / "metrics.jsonl").read_text().splitlines() \
        if (tmp_path / "metrics.jsonl").exists() else []
    assert [json.loads(x) for x in written] == ([row] if rank == 0 else [])
    assert capsys.readouterr().out == ("line 2\na note\n" if rank == 0 else "")


def test_the_command_line_picks_the_framework_before_importing_it(monkeypatch):
    assert framework_of(["--preset", "x", "--framework", "jax"]) == "jax"
    assert framework_of(["--preset", "x"]) == "torch"
    called = {}

    def torch_main(argv):
        called["torch"] = argv
        return 7

    monkeypatch.setattr("reference_trainers.moco.train.main", torch_main)
    assert command_line("moco", ["--out", "x"]) == 7
    assert called == {"torch": ["--out", "x"]}
