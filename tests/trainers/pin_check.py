"""The comparison both pin tests share (tests/trainers/test_pins.py for PyTorch,
tests/jax_trainers/test_pins_jax.py for JAX): run a pinned trainer, compare exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR
from tests.trainers.pins.record_pins import load_pin, machine, pin_of, pin_path

RERECORD = ("If the change is MEANT to alter behaviour, re-record on main's machine with "
            "`PYTHONPATH=$PWD python -m tests.trainers.pins.record_pins {name}` and say why in "
            "the commit; otherwise the change altered what the trainer computes.")


def check_pin(name: str, tmp_path: Path) -> None:
    """Run pin `name` into tmp_path and assert it equals the recorded pin, part by part."""
    if not Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    expected = load_pin(name)
    if expected["machine"] != machine():
        pytest.skip(f"pin {pin_path(name).name} was recorded on {expected['machine']}, this is "
                    f"{machine()}: exact equality holds only on the same machine and versions. "
                    + RERECORD.format(name=name))
    got = pin_of(name, tmp_path / "run")
    hint = RERECORD.format(name=name)
    assert got["run"] == expected["run"], hint
    assert len(got["metrics"]) == len(expected["metrics"]), hint
    for row_got, row_expected in zip(got["metrics"], expected["metrics"]):
        assert row_got == row_expected, f"epoch {row_expected['epoch']}'s metrics row. " + hint
    for plan_got, plan_expected in zip(got["plans"], expected["plans"]):
        assert plan_got == plan_expected, f"epoch {plan_expected['epoch']}'s plan. " + hint
    assert got["summary"] == expected["summary"], hint
    assert got == expected, hint  # coreset, planted arrays, and anything not named above
