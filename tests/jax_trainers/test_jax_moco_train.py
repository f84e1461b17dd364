"""The JAX MoCo v3 trainer (reference_trainers/jax/moco.py) on a small real subset of
Fashion-MNIST: CPU smoke runs, resume, the run directory against the PyTorch trainer's, data
parallelism on two simulated devices without torch, and its LARS and kNN against the
PyTorch trainer's."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR  # noqa: E402
from reference_trainers.jax import moco as jax_moco  # noqa: E402
from tests.trainers.runfiles import assert_resumed_equals_uninterrupted, metrics_rows  # noqa: E402

pytestmark = pytest.mark.skipif(
    not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--framework", "jax", "--preset", "cpu-tiny-moco", "--num-train", "768", "--num-test",
        "300", "--batch-size", "64", "--scan-warmup-epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax-moco")
    assert jax_moco.main(ARGS + ["--epochs", "5", "--out", str(out)]) == 0
    return out


def test_the_step_updates_the_momentum_encoder_first_and_donates_its_state():
    from reference_trainers.jax.moco_models import MoCoNet
    from reference_trainers.jax.steps import local_mesh, place_batch, replicate

    net = MoCoNet(backbone="resnet", width=4, dim=8, mlp_dim=16)
    tx_state = jax_moco.init_state(net, jax_moco.build_optimizer("lars", weight_decay=1e-6), 0)
    base_before = jax.tree.map(np.array, tx_state.params["base"])
    mesh = local_mesh()
    state = replicate(mesh, tx_state)
    step = jax_moco.compiled_step(net, "lars", 1e-6, 0.3, 4, 0.5, 0.0, 0.99, 0.2)
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((8, 28, 28, 1)).astype(np.float32) for _ in range(2))
    old_leaf = jax.tree.leaves(state.params)[0]
    new, metrics = step(state, place_batch(mesh, {"x1": x1, "x2": x2,
                                                  "progress": np.float32(2.0)}))
    assert old_leaf.is_deleted()
    assert metrics["per_sample"].shape == (2, 8)
    assert float(metrics["loss"]) == pytest.approx(
        float(metrics["per_sample"].mean(axis=1).sum()), rel=1e-6)
    # MoCo v3's cosine momentum at half the run: 1 - (1 - 0.99) (cos(pi / 2) + 1) / 2.
    assert float(metrics["momentum"]) == pytest.approx(
        1 - 0.01 * (math.cos(math.pi * 2 / 4) + 1) / 2, rel=1e-6)
    # The momentum encoder started as a copy, so m k + (1 - m) q is the pre-step base encoder,
    # while the base encoder itself has taken an optimiser step.
    for ema, before, after in zip(jax.tree.leaves(new.ema_params), jax.tree.leaves(base_before),
                                  jax.tree.leaves(new.params["base"])):
        np.testing.assert_allclose(np.asarray(ema), before, rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(b, np.asarray(a)) for b, a in
               zip(jax.tree.leaves(base_before), jax.tree.leaves(new.params["base"])))


def test_loss_goes_down_and_the_run_writes_its_directory(full_run):
    rows = metrics_rows(full_run)
    assert [r["epoch"] for r in rows] == list(range(5))
    # Like with like: mutation epochs train on D's complement, whose mean loss is not the full
    # data's; warm-up and preparation epochs both see every sample.
    full = [r["train_loss"] for r in rows if r["phase"] in ("warmup", "prepare")]
    assert len(full) >= 2 and full[-1] < full[0] - 0.05
    assert all(0.99 <= r["momentum"] <= 1.0 for r in rows)
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["linear_probe_top1"] > 0.3 and summary["knn_top1"] > 0.3
    for name in ("config.json", "planted.npz", "coreset.npy", "scan.zarr"):
        assert (full_run / name).exists(), name
    assert len(list((full_run / "checkpoints").glob("epoch_*.npz"))) == 2


def test_a_pruned_run_skips_the_steps_it_claims(full_run):
    rows = metrics_rows(full_run)
    assert any(r["phase"] == "mutate" for r in rows)
    for r in rows:
        assert r["samples"] == r["num_kept"]
        full, rest = divmod(r["num_kept"], 64)
        assert r["steps"] == full + (rest > 1)   # a lone last sample joins the batch before
    summary = json.loads((full_run / "summary.json").read_text())
    visits = sum(r["samples"] for r in rows)
    assert summary["sample_visits"] == visits
    assert summary["realised_pruned_share"] == pytest.approx(1 - visits / (5 * 768))
    assert summary["realised_pruned_share"] > 0.05


def test_resume_continues_with_the_same_plans_and_losses(full_run, tmp_path):
    out = tmp_path / "resumed"
    args = ARGS + ["--epochs", "5", "--out", str(out)]
    assert jax_moco.main(args + ["--stop-after", "3"]) == 0
    assert [r["epoch"] for r in metrics_rows(out)] == [0, 1, 2]
    assert jax_moco.main(args + ["--resume"]) == 0
    assert_resumed_equals_uninterrupted(full_run, out, epochs=5, loss_rel=1e-6,
                                        exact=("momentum",))
    assert json.loads((out / "summary.json").read_text())["knn_top1"] == \
        json.loads((full_run / "summary.json").read_text())["knn_top1"]


def test_the_run_directory_and_keys_match_the_torch_trainers(full_run, tmp_path):
    pytest.importorskip("torch")
    from reference_trainers.moco import train as torch_moco

    out = tmp_path / "torch"
    assert torch_moco.main([a for a in ARGS if a not in ("--framework", "jax")]
                           + ["--epochs", "5", "--out", str(out)]) == 0
    names = lambda d: sorted(p.name for p in d.iterdir() if p.name != "checkpoints")  # noqa: E731
    assert names(full_run) == names(out)
    assert json.loads((full_run / "summary.json").read_text()).keys() == \
        json.loads((out / "summary.json").read_text()).keys()
    for ra, rb in zip(metrics_rows(full_run), metrics_rows(out)):
        assert sorted(ra) == sorted(rb)


def test_the_vit_tiny_backbone_trains_with_adamw(tmp_path):
    out = tmp_path / "vit"
    assert jax_moco.main(ARGS + ["--backbone", "vit-tiny", "--optimizer", "adamw", "--lr",
                                 "1.5e-4", "--weight-decay", "0.1", "--num-train", "256",
                                 "--num-test", "200", "--epochs", "2", "--out", str(out)]) == 0
    rows = metrics_rows(out)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert json.loads((out / "summary.json").read_text())["knn_top1"] > 0.2


def test_backbones_and_flags_of_the_gpu_presets_are_refused(tmp_path, capsys):
    for extra, word in ((["--backbone", "vit_small"], "vit_small"),
                        (["--grad-checkpointing"], "--grad-checkpointing")):
        assert jax_moco.main(ARGS + extra + ["--out", str(tmp_path / word)]) == 2
        err = capsys.readouterr().err
        assert word in err and "--framework jax" in err


_SUBPROCESS = """
import json, runpy, sys
sys.argv = ["reference_trainers.moco"] + json.loads(sys.argv[1])
try:
    runpy.run_module("reference_trainers.moco", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
import jax
print(json.dumps({"torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch"),
                  "devices": jax.device_count()}))
"""


@pytest.mark.distributed
def test_two_devices_train_as_one_does_and_torch_is_never_imported(full_run, tmp_path):
    """`python -m reference_trainers.moco --framework jax` on 2 simulated CPU devices, stopped
    after 3 of 5 epochs: the one-device run's losses up to float summation order and what it
    grows into over later steps (BatchNorm statistics span the whole batch under GSPMD, as on
    one device), its plans exactly while
    they do not depend on losses (warm-up, preparation), and the mutation epoch's plan up to
    the samples whose loss sits on a cut-off: D' is ranked from losses that differ in float
    summation order, and MoCo's D' is the union of two views' candidates, so a sample at a
    cut can flip and |D'| move by one (seen: 644 vs 645 kept of 768 on one machine)."""
    out = tmp_path / "two"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": str(ROOT)}
    args = ARGS + ["--epochs", "5", "--stop-after", "3", "--out", str(out)]
    done = subprocess.run([sys.executable, "-c", _SUBPROCESS, json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"torch": [], "devices": 2}
    a, b = metrics_rows(full_run)[:3], metrics_rows(out)
    assert [r["phase"] for r in b] == ["warmup", "prepare", "mutate"]
    for ra, rb in zip(a[:2], b[:2]):
        assert (ra["phase"], ra["num_kept"], ra["steps"], ra["samples"]) == \
            (rb["phase"], rb["num_kept"], rb["steps"], rb["samples"])
    assert a[2]["phase"] == b[2]["phase"] == "mutate"
    assert a[2]["num_kept"] < 768 and abs(a[2]["num_kept"] - b[2]["num_kept"]) <= 768 // 100
    assert b[2]["samples"] == b[2]["num_kept"]
    # Epoch 0: the same samples in the same batches from the same weights (seen: 1e-6 apart).
    # Later epochs: summation-order differences have grown through every LARS step since
    # (seen: 1.4e-3 apart at epoch 1 on one machine, under 1e-4 on another).
    assert b[0]["train_loss"] == pytest.approx(a[0]["train_loss"], rel=1e-4)
    for ra, rb in zip(a[1:], b[1:]):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-2)


def test_optax_lars_takes_the_torch_lars_first_step():
    """One step from zero momentum: weight decay and trust ratio on matrices, plain steps on
    vectors, the same update as reference_trainers/moco/optim.LARS."""
    torch = pytest.importorskip("torch")
    import optax

    from reference_trainers.jax.steps import build_optimizer, set_learning_rate
    from reference_trainers.moco.optim import LARS

    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((5, 3)).astype(np.float32),
              "b": rng.standard_normal(3).astype(np.float32)}
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    tx = build_optimizer("lars", weight_decay=0.1)
    state = set_learning_rate(tx.init(params), 0.5)
    updates, _ = tx.update(grads, state, params)
    ours = optax.apply_updates(params, updates)
    torch_params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    for k, p in torch_params.items():
        p.grad = torch.from_numpy(grads[k])
    LARS(list(torch_params.values()), lr=0.5, weight_decay=0.1).step()
    for k in params:
        np.testing.assert_allclose(np.asarray(ours[k]), torch_params[k].detach().numpy(),
                                   rtol=1e-5)
