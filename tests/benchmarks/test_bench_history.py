"""benchmarks/bench_history.py on tiny sizes: it measures, fits a + b N through two points, and
its table names the command; the fit is the line through the two rows, nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_history  # noqa: E402


def test_the_fit_is_the_line_through_two_measured_rows():
    rows = [{"n": 10, "x": 130.0}, {"n": 110, "x": 530.0}]
    fixed, slope, at = bench_history.extrapolate(rows, "x")
    assert (fixed, slope) == pytest.approx((90.0, 4.0))
    assert at == pytest.approx(90.0 + 4.0 * 10**9)


def test_a_tiny_run_measures_disk_and_prints_the_table(capsys):
    assert bench_history.main(["--sizes", "2000", "6000", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "`python benchmarks/bench_history.py --sizes 2000 6000 --epochs 2`" in out
    assert "| 2e+03 |" in out and "| 6e+03 |" in out
    assert "disk per preparation epoch:" in out
