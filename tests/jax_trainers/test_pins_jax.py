"""Behaviour pins of the JAX trainers (issue 16): a cpu-tiny one-process CLIP and MoCo run must
give exactly what tests/trainers/pins/*.json recorded (record_pins.py says how to re-record).
Marked slow: about 50 s each on 2 cores, most of it XLA compiling; run them with
`pytest -m slow tests/jax_trainers/test_pins_jax.py` after any change to the trainers."""

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

from tests.trainers.pin_check import check_pin  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clip-jax", "moco-jax"])
def test_a_jax_trainer_computes_what_it_computed_when_pinned(name, tmp_path):
    check_pin(name, tmp_path)
