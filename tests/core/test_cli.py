"""The `python -m scan_core simulate` command: its table, its counts, its errors."""

import re
import subprocess
import sys

import pytest

from scan_core.__main__ import config_from_args, build_parser, main
from scan_core.config import ScanConfig


def _rows(text):
    return [line.split() for line in text.splitlines() if re.match(r"^\s+\d+\s+[a-z]+\s", line)]


def test_simulate_prints_one_row_per_epoch_with_counted_saving(capsys):
    assert main(["simulate", "--num-samples", "5000", "--epochs", "10", "--batch-size", "100",
                 "--world-size", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert [int(r[0]) for r in rows] == list(range(10))
    phases = [r[1] for r in rows]
    assert phases[:2] == ["warmup", "warmup"] and "prepare" in phases and "mutate" in phases
    kept = [int(r[4].replace(",", "")) for r in rows]
    # Counted as served: 2 ranks pad an odd kept count by one repeat (DistributedSampler).
    served = [-(-k // 2) * 2 for k in kept]
    saving = 1 - sum(served) / (10 * 5000)
    assert f"realised saving: {saving:.2%}" in out
    for r, k in zip(rows, kept):
        if r[1] in ("warmup", "prepare"):
            assert k == 5000


def test_simulate_rejects_an_unreachable_target(capsys):
    code = main(["simulate", "--num-samples", "1000", "--epochs", "6", "--batch-size", "50",
                 "--target-rate", "0.6"])
    assert code == 2
    assert "ScanTargetUnreachableError" in capsys.readouterr().err


def test_simulate_rejects_a_bad_size(capsys):
    assert main(["simulate", "--num-samples", "0", "--epochs", "3", "--batch-size", "8"]) == 2
    assert "--num-samples must be >= 1" in capsys.readouterr().err


def test_config_from_args_maps_rules_and_presets():
    args = build_parser().parse_args(["simulate", "--num-samples", "10", "--epochs", "4",
                                      "--batch-size", "2", "--rule", "ill", "--preset", "moco"])
    cfg = config_from_args(args)
    assert cfg == ScanConfig.moco(mode="ill_matched")
    args = build_parser().parse_args(["simulate", "--num-samples", "10", "--epochs", "4",
                                      "--batch-size", "2", "--rule", "infobatch"])
    assert config_from_args(args).num_epochs == 4


@pytest.mark.parametrize("argv", [["--help"], ["simulate", "--help"]])
def test_help_runs_as_a_module(argv):
    done = subprocess.run([sys.executable, "-m", "scan_core", *argv], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "usage" in done.stdout
