"""The JAX CLIP trainer (reference_trainers/jax/clip.py) on a small real subset of
Fashion-MNIST: CPU smoke runs, resume, the run directory against the PyTorch trainer's, data
parallelism on two simulated devices, a run that never imports torch, and the linear probe
against the PyTorch probe."""

import json
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
from reference_trainers.jax import clip as jax_clip  # noqa: E402
from tests.jax_trainers.conftest import CLIP_ARGS  # noqa: E402
from tests.trainers.runfiles import (assert_resumed_equals_uninterrupted,  # noqa: E402
                                     latest_snapshot, metrics_rows)

pytestmark = pytest.mark.skipif(
    not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")

ROOT = Path(__file__).resolve().parents[2]
ARGS = CLIP_ARGS


@pytest.fixture(scope="module")
def full_run(clip_one_process_run):
    """The 5-epoch one-process run (conftest.py: shared with test_jax_processes.py)."""
    return clip_one_process_run


def test_the_train_step_jits_donates_its_state_and_returns_per_sample_losses():
    from adapters.jax import clip_loss
    from reference_trainers.jax.models import CLIP
    from reference_trainers.jax.steps import (TrainState, build_optimizer, local_mesh,
                                              lr_schedule, make_clip_step, place_batch,
                                              replicate)

    model = CLIP(vocab_size=20, eot_id=2, context_length=8, embed_dim=16, image_width=4)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 28, 28, 1)).astype(np.float32)
    tokens = rng.integers(4, 20, (8, 8))
    tokens[:, 5] = 2
    variables = model.init(jax.random.PRNGKey(0), images, tokens)
    # The per-sample losses the step must return: clip_loss's on the pre-step features.
    @jax.jit
    def reference(variables):
        (i, t, s), _ = model.apply(variables, images, tokens, train=True,
                                   mutable=["batch_stats"])
        return clip_loss(i, t, s).per_sample

    expected = np.asarray(reference(variables))
    tx = build_optimizer("adamw", weight_decay=0.1)
    mesh = local_mesh()
    state = replicate(mesh, TrainState(variables["params"], variables["batch_stats"],
                                       tx.init(variables["params"])))
    step = make_clip_step(model, tx, lr_schedule(1e-3, 2, 0.5, 0.0))
    batch = place_batch(mesh, {"images": images, "tokens": tokens,
                               "progress": np.float32(0.25)})
    old_leaf = jax.tree.leaves(state.params)[0]
    new_state, metrics = step(state, batch)
    assert old_leaf.is_deleted()                                    # donated, updated in place
    assert metrics["per_sample"].shape == (2, 8)
    assert float(metrics["loss"]) == pytest.approx(float(metrics["per_sample"].mean()), rel=1e-6)
    assert float(metrics["lr"]) == pytest.approx(1e-3 * 0.25 / 0.5, rel=1e-6)  # warm-up
    np.testing.assert_allclose(np.asarray(metrics["per_sample"]), expected, rtol=1e-5)
    assert not jax.tree.leaves(new_state.params)[0].is_deleted()


def test_loss_goes_down_and_the_run_writes_its_directory(full_run):
    rows = metrics_rows(full_run)
    assert [r["epoch"] for r in rows] == list(range(5))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.2
    summary = json.loads((full_run / "summary.json").read_text())
    assert 0.0 <= summary["zero_shot_top1"] <= 1.0 and summary["linear_probe_top1"] > 0.3
    for name in ("config.json", "planted.npz", "coreset.npy", "scan.zarr"):
        assert (full_run / name).exists(), name
    assert len(list((full_run / "checkpoints").glob("epoch_*.npz"))) == 2
    assert json.loads((full_run / "config.json").read_text())["framework"] == "jax"


def test_a_pruned_run_skips_the_steps_it_claims(full_run):
    rows = metrics_rows(full_run)
    assert any(r["phase"] == "mutate" for r in rows)
    for r in rows:
        assert r["samples"] == r["num_kept"]                       # every kept id once
        assert r["steps"] == -(-r["num_kept"] // 64)               # ceil(kept / batch)
    summary = json.loads((full_run / "summary.json").read_text())
    visits = sum(r["samples"] for r in rows)
    assert summary["sample_visits"] == visits
    assert summary["steps"] == sum(r["steps"] for r in rows)
    assert summary["realised_pruned_share"] == pytest.approx(1 - visits / (5 * 768))
    assert summary["realised_pruned_share"] > 0.05


def test_resume_continues_with_the_same_plans_and_losses(full_run, tmp_path):
    """Stopped after 3 of 5 epochs and resumed: the same plans, losses and store log as the
    run that never stopped."""
    out = tmp_path / "resumed"
    args = ARGS + ["--epochs", "5", "--out", str(out)]
    assert jax_clip.main(args + ["--stop-after", "3"]) == 0
    assert [r["epoch"] for r in metrics_rows(out)] == [0, 1, 2]
    assert jax_clip.main(args + ["--resume"]) == 0
    assert_resumed_equals_uninterrupted(full_run, out, epochs=5, loss_rel=1e-6, exact=("steps",))
    sa = json.loads((full_run / "summary.json").read_text())
    sb = json.loads((out / "summary.json").read_text())
    assert sb["zero_shot_top1"] == pytest.approx(sa["zero_shot_top1"], abs=1e-9)
    assert sb["linear_probe_top1"] == pytest.approx(sa["linear_probe_top1"], abs=0.01)


def test_the_run_directory_and_keys_match_the_torch_trainers(full_run, tmp_path, capsys):
    pytest.importorskip("torch")
    from reference_trainers.clip import train as torch_clip

    out = tmp_path / "torch"
    torch_args = [a for a in ARGS if a not in ("--framework", "jax")]
    assert torch_clip.main(torch_args + ["--epochs", "5", "--out", str(out)]) == 0
    names = lambda d: sorted(p.name for p in d.iterdir() if p.name != "checkpoints")  # noqa: E731
    assert names(full_run) == names(out)
    assert json.loads((full_run / "summary.json").read_text()).keys() == \
        json.loads((out / "summary.json").read_text()).keys()
    for ra, rb in zip(metrics_rows(full_run), metrics_rows(out)):
        assert sorted(ra) == sorted(rb)
    jax_config = json.loads((full_run / "config.json").read_text())
    torch_config = json.loads((out / "config.json").read_text())
    assert {k for k in jax_config if jax_config[k] != torch_config[k]} <= {"framework"}
    # A torch run is not resumed by the JAX trainer: config.json names the framework.
    capsys.readouterr()
    assert jax_clip.main(ARGS + ["--epochs", "5", "--out", str(out), "--resume"]) == 2
    assert "framework" in capsys.readouterr().err


def test_flags_only_the_torch_trainer_has_are_refused(tmp_path, capsys):
    for extra, word in ((["--model", "RN50"], "RN50"), (["--compile"], "--compile"),
                        (["--precision", "bf16"], "bf16")):
        # --workers decodes a corpus in worker processes now (test_jax_workers.py)
        assert jax_clip.main(ARGS + extra + ["--out", str(tmp_path / word)]) == 2
        err = capsys.readouterr().err
        assert word in err and "--framework jax" in err


def test_a_checkpoint_of_another_model_or_framework_is_refused_by_name(tmp_path):
    from reference_trainers.common.errors import TrainerError
    from reference_trainers.common.rundir import RunDir
    from reference_trainers.jax.checkpoint import load_checkpoint, save_checkpoint
    from tests.trainers.runfiles import snapshot

    run = RunDir(tmp_path / "run")
    rng = np.random.default_rng(3)
    state = {"dense": {"kernel": np.ones((4, 2), np.float32), "bias": np.zeros(2, np.float32)}}
    save_checkpoint(run, 0, state, rng, wall=1.5)
    snapshot(run, 0)  # resume needs the store's snapshot of the checkpoint's epoch
    draws = rng.random(3)
    restored, epoch, wall = load_checkpoint(run, state, rng := np.random.default_rng(99))
    assert (epoch, wall) == (0, 1.5)
    np.testing.assert_array_equal(restored["dense"]["kernel"], state["dense"]["kernel"])
    np.testing.assert_array_equal(rng.random(3), draws)             # the generator resumes
    wider = {"dense": {"kernel": np.ones((4, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    with pytest.raises(TrainerError, match=r"\['dense'\]\['bias'\]"):
        load_checkpoint(run, wider, rng)
    with pytest.raises(TrainerError, match="another model"):
        load_checkpoint(run, {"other": state["dense"]}, rng)
    (run.path / "checkpoints" / "epoch_00000001.pt").write_bytes(b"torch")
    with pytest.raises(TrainerError, match="--framework torch"):
        load_checkpoint(run, state, rng)


_SUBPROCESS = """
import json, runpy, sys
sys.argv = ["reference_trainers.clip"] + json.loads(sys.argv[1])
try:
    runpy.run_module("reference_trainers.clip", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
import jax
print(json.dumps({"torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch"),
                  "devices": jax.device_count()}))
"""


def _run_cli(args, devices):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _SUBPROCESS, json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.distributed
def test_two_devices_train_as_one_does_and_torch_is_never_imported(full_run, tmp_path):
    """`python -m reference_trainers.clip --framework jax` on 2 simulated CPU devices (the
    batch sharded over the mesh, parameters replicated), stopped after 3 of the 5 epochs: the
    same plans as the one-device run, losses equal to float summation order, and no torch
    module loaded in the process."""
    out = tmp_path / "two"
    seen = _run_cli(ARGS + ["--epochs", "5", "--stop-after", "3", "--out", str(out)], devices=2)
    assert seen["devices"] == 2
    assert seen["torch"] == []
    a, b = metrics_rows(full_run)[:3], metrics_rows(out)
    assert [r["phase"] for r in b] == ["warmup", "prepare", "mutate"]
    for ra, rb in zip(a, b):
        assert (ra["phase"], ra["num_kept"], ra["steps"], ra["samples"]) == \
            (rb["phase"], rb["num_kept"], rb["steps"], rb["samples"])
    for ra, rb in zip(a[:2], b[:2]):  # the same samples in the same batches
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
    assert b[-1]["num_kept"] < 768
    # D' ranks losses equal to ~1e-6, so a sample at a selection boundary may swap places:
    # the candidate sets (the same in both stores since the preparation epoch) nearly agree,
    # and the pruned epoch, which trains on them, has nearly the same loss.
    for key in ("red_bits", "ill_bits"):
        mine, theirs = (np.unpackbits(latest_snapshot(run)[key]).astype(bool) for run in (full_run, out))
        assert mine.sum() == theirs.sum() > 0
        assert (mine & theirs).sum() >= 0.98 * mine.sum()
    assert b[2]["train_loss"] == pytest.approx(a[2]["train_loss"], rel=1e-2)


def test_the_linear_probe_agrees_with_the_torch_probe():
    """Same features (a fixed random projection of real Fashion-MNIST pixels), same
    constants: the two probes' accuracies agree within a point."""
    pytest.importorskip("torch")
    from reference_trainers.common import evaluation as torch_evaluation
    from reference_trainers.common.data import load_fashion_mnist
    from reference_trainers.jax import evaluation as jax_evaluation

    splits = load_fashion_mnist()
    projection = np.random.default_rng(0).standard_normal((784, 64)).astype(np.float32)

    def features(images):
        return np.tanh(images.reshape(len(images), -1) / 255.0 @ projection / 10)

    args = (features(splits.train_images[:4000]), splits.train_labels[:4000],
            features(splits.test_images[:2000]), splits.test_labels[:2000])
    ours = jax_evaluation.linear_probe_top1(*args, num_classes=10, seed=0)
    theirs = torch_evaluation.linear_probe_top1(*args, num_classes=10, seed=0)
    assert ours > 0.6
    assert ours == pytest.approx(theirs, abs=0.01)
