"""Behaviour pins of the PyTorch trainers (issue 16): a cpu-tiny one-process CLIP and MoCo run
must give exactly the metrics rows (timing aside), plans, recorded ids and losses, summary and
coreset recorded in tests/trainers/pins/*.json (how and how to re-record: record_pins.py).
The JAX half is tests/jax_trainers/test_pins_jax.py."""

import pytest

from tests.trainers.pin_check import check_pin
from tests.trainers.pins.record_pins import machine


@pytest.mark.parametrize("name", ["clip-torch", "moco-torch"])
def test_a_torch_trainer_computes_what_it_computed_when_pinned(name, tmp_path):
    check_pin(name, tmp_path)


def test_the_pin_check_sees_a_changed_behaviour(tmp_path, monkeypatch):
    """A run that computes something else (a longer LR warm-up) fails at its first metrics row:
    the pin is not blind."""
    from tests.trainers.pins import record_pins

    module, argv = record_pins.RUNS["moco-torch"]
    monkeypatch.setitem(record_pins.RUNS, "moco-torch",
                        (module, [*argv, "--lr-warmup-epochs", "1.0"]))
    expected = record_pins.load_pin("moco-torch")
    changed_run = expected["run"].replace(" --out DIR", " --lr-warmup-epochs 1.0 --out DIR")
    monkeypatch.setattr("tests.trainers.pin_check.load_pin",
                        lambda name: {**expected, "run": changed_run})
    with pytest.raises(AssertionError, match="epoch 0's metrics row"):
        check_pin("moco-torch", tmp_path)


def _cpuinfo(family: int, model: int) -> str:
    block = (f"processor\t: {{n}}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\n"
             f"model\t\t: {model}\nmodel name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu sse2\n")
    return block.format(n=0) + "\n" + block.format(n=1).replace(f": {model}\n", ": 99\n")


def test_two_cpu_generations_under_one_name_are_two_machines():
    """Two EPYC generations both name themselves "AMD EPYC" and round float32 differently (the
    torch pins' first loss moved in the 8th digit): a pin from one must skip on the other, not
    fail. Only the first processor's block counts."""
    zen4, zen5 = machine(_cpuinfo(25, 17)), machine(_cpuinfo(26, 2))
    assert zen4["cpu"] != zen5["cpu"]
    assert zen4["cpu"].startswith("AMD EPYC") and "model 17" in zen4["cpu"]
    assert zen4 == machine(_cpuinfo(25, 17))
    assert {k: v for k, v in zen4.items() if k != "cpu"} == \
        {k: v for k, v in zen5.items() if k != "cpu"}
