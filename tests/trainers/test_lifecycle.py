"""common/lifecycle.py: a checkpoint restores everything a resumed run continues from."""

from __future__ import annotations

import torch

from reference_trainers.common.lifecycle import load_checkpoint, save_checkpoint
from reference_trainers.common.rundir import RunDir
from tests.trainers.runfiles import snapshot


def _parts(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer, torch.Generator().manual_seed(seed)


def test_the_fp16_grad_scaler_resumes_from_its_loss_scale(tmp_path):
    """An fp16 run's loss scale (grown or backed off over the run) is part of its state: a
    resumed run must not restart from the initial 65536."""
    run = RunDir(tmp_path / "run")
    model, optimizer, generator = _parts(0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 512.0, "_growth_tracker": 7})
    save_checkpoint(run, 3, model, optimizer, generator, 12.5, scaler=scaler)
    snapshot(run, 3)

    model2, optimizer2, generator2 = _parts(1)
    scaler2 = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    assert load_checkpoint(run, model2, optimizer2, generator2, scaler=scaler2) == (3, 12.5)
    assert scaler2.state_dict()["scale"] == 512.0
    assert scaler2.state_dict()["_growth_tracker"] == 7
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(generator.get_state(), generator2.get_state())


def test_a_run_without_a_scaler_saves_and_loads_without_one(tmp_path):
    run = RunDir(tmp_path / "run")
    model, optimizer, generator = _parts(0)
    save_checkpoint(run, 0, model, optimizer, generator, 1.0)
    snapshot(run, 0)
    model2, optimizer2, generator2 = _parts(1)
    assert load_checkpoint(run, model2, optimizer2, generator2,
                           scaler=torch.amp.GradScaler("cpu")) == (0, 1.0)
