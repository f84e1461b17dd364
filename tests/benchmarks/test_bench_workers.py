"""benchmarks/bench_workers.py's arithmetic: per pruned epoch, the share of wall-clock saved
against the mean unpruned epoch after the first (which pays start-up costs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_workers import epoch_saving, median_rows  # noqa: E402


def test_saving_is_measured_against_the_unpruned_epochs_after_the_first():
    rows = [{"epoch": 0, "num_kept": 100, "seconds": 50.0},   # start-up: left out of the base
            {"epoch": 1, "num_kept": 100, "seconds": 10.0},
            {"epoch": 2, "num_kept": 60, "seconds": 6.5},
            {"epoch": 3, "num_kept": 100, "seconds": 12.0},
            {"epoch": 4, "num_kept": 20, "seconds": 3.3}]
    out = epoch_saving(rows, 100)
    assert [r["epoch"] for r in out] == [2, 4]
    assert out[0]["pruned"] == pytest.approx(0.4) and out[0]["saved"] == pytest.approx(1 - 6.5 / 11)
    assert out[1]["ratio"] == pytest.approx((1 - 3.3 / 11) / 0.8)


def test_a_run_without_an_unpruned_epoch_to_compare_is_refused():
    with pytest.raises(SystemExit, match="no unpruned epoch"):
        epoch_saving([{"epoch": 0, "num_kept": 100, "seconds": 5.0},
                      {"epoch": 1, "num_kept": 50, "seconds": 3.0}], 100)


def test_each_epoch_takes_the_median_seconds_of_the_runs():
    runs = [[{"epoch": 0, "num_kept": 100, "seconds": s0},
             {"epoch": 1, "num_kept": 40, "seconds": s1}]
            for s0, s1 in ((5.0, 2.0), (9.0, 1.0), (6.0, 7.0))]
    rows = median_rows(runs)
    assert [(r["epoch"], r["num_kept"], r["seconds"]) for r in rows] == [(0, 100, 6.0),
                                                                         (1, 40, 2.0)]


def test_runs_that_kept_different_samples_are_refused():
    runs = [[{"epoch": 0, "num_kept": 100, "seconds": 5.0}],
            [{"epoch": 0, "num_kept": 90, "seconds": 5.0}]]
    with pytest.raises(SystemExit, match="different counts"):
        median_rows(runs)
