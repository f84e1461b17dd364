"""The JAX trainers pad a short last batch to the batch size (runtime.run_epoch with
adapters.jax.pad_batch), so a pruned epoch does not compile the step again: the padded step
must compute what the short step computed (BatchNorm statistics, loss, per-sample losses, the
update), to float rounding, and a pruned run must compile its step for two shapes only."""

import logging
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
optax = pytest.importorskip("optax")

from adapters.jax import pad_batch  # noqa: E402
from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR  # noqa: E402
from reference_trainers.jax import clip as jax_clip  # noqa: E402
from reference_trainers.jax import moco as jax_moco  # noqa: E402
from reference_trainers.jax.models import CLIP  # noqa: E402
from reference_trainers.jax.moco_models import MoCoNet, encoder_of  # noqa: E402
from reference_trainers.jax.steps import (TrainState, init_variables,  # noqa: E402
                                          local_mesh, lr_schedule, make_clip_step,
                                          make_moco_step, momentum_schedule, place_batch,
                                          replicate)
from tests.trainers.runfiles import metrics_rows  # noqa: E402

FULL, SHORT = 8, 5
# Updates are compared relative to their largest entry in each array: a step through a chain
# of BatchNorms on 5 samples amplifies float32 rounding to about 3e-5 of the update, and the
# masked computation on the same 5 rows (an all-True mask, no padding) already differs from
# the unmasked one by that much. Padding without the mask misses by far more (checked below).
REL = 2e-4


def _relative_gaps(before, got, want):
    """Per array: max |got - want| / max |want - before|, the update's largest entry (at least
    0.01: an array that barely moved, e.g. a running mean that stays near 0, is held to an
    absolute 0.01 * REL instead)."""
    gaps = []
    for b, g, w in zip(jax.tree.leaves(before), jax.tree.leaves(got), jax.tree.leaves(want)):
        b, g, w = (np.asarray(x, np.float64) for x in (b, g, w))
        gaps.append(np.abs(g - w).max() / max(np.abs(w - b).max(), 0.01))
    return np.array(gaps)


def _run(step, fresh_state, batch, pad=None):
    """(state, metrics) after one step on `batch`, padded to FULL when `pad` says how:
    "masked" (with pad_batch's valid) or "unmasked" (the padded rows treated as real)."""
    mesh = local_mesh()
    if pad is not None:
        batch, valid = pad_batch(batch, FULL)
        if pad == "masked":
            batch = {**batch, "valid": valid}
    return step(replicate(mesh, fresh_state()), place_batch(mesh, dict(batch)))


def _check_padded_equals_short(step, fresh_state, batch, parts):
    before = fresh_state()
    short, short_out = _run(step, fresh_state, batch)
    padded, pad_out = _run(step, fresh_state, batch, pad="masked")
    unmasked, _ = _run(step, fresh_state, batch, pad="unmasked")
    assert pad_out["per_sample"].shape == (2, FULL)
    np.testing.assert_allclose(float(pad_out["loss"]), float(short_out["loss"]), rtol=2e-5)
    np.testing.assert_allclose(np.asarray(pad_out["per_sample"])[:, :SHORT],
                               np.asarray(short_out["per_sample"]), rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(pad_out["per_sample"])[:, SHORT:], 0.0)
    for part in parts:  # params, batch_stats, and the momentum encoder's for MoCo
        gaps = _relative_gaps(getattr(before, part), getattr(padded, part),
                              getattr(short, part))
        assert gaps.max() < REL, (part, gaps.max())
    # The tolerance tells right from wrong: padding the rows without the mask does not pass
    # (the parameters and the BatchNorm statistics both move elsewhere).
    for part in ("params", "batch_stats"):
        wrong = _relative_gaps(getattr(before, part), getattr(unmasked, part),
                               getattr(short, part))
        assert wrong.max() > 50 * REL, (part, wrong.max())


def test_a_padded_clip_step_takes_the_short_steps_update():
    """With InfoBatch's weights, which are padded with their rows (the unweighted loss is the
    same code with weights None: tests/adapters/jax/test_padding.py holds both)."""
    model = CLIP(vocab_size=20, eot_id=2, context_length=8, embed_dim=16, image_width=4)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((SHORT, 28, 28, 1)).astype(np.float32)
    tokens = rng.integers(4, 20, (SHORT, 8))
    tokens[:, 5] = 2
    # Plain SGD: the update is the gradient, so comparing parameters compares gradients. (Adam's
    # first update is lr * sign(g), which turns a rounding-sized gradient into a full step.)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)

    def fresh_state():
        variables = init_variables(model, 0, images, tokens)
        return TrainState(variables["params"], variables["batch_stats"],
                          tx.init(variables["params"]))

    step = make_clip_step(model, tx, lr_schedule(1e-2, 2, 0.5, 0.0))
    batch = {"images": images, "tokens": tokens, "progress": np.float32(1.0),
             "weights": rng.choice([1.0, 1.5], size=SHORT).astype(np.float32)}
    _check_padded_equals_short(step, fresh_state, batch, ("params", "batch_stats"))


def test_a_padded_moco_step_takes_the_short_steps_update_and_momentum_encoder():
    net = MoCoNet(backbone="resnet", width=4, dim=8, mlp_dim=16)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)  # the update is the gradient
    step = make_moco_step(net, encoder_of(net), tx, lr_schedule(0.3, 4, 0.5, 0.0),
                          momentum_schedule(0.99, 4), 0.2)
    rng = np.random.default_rng(1)
    x1, x2 = (rng.standard_normal((SHORT, 28, 28, 1)).astype(np.float32) for _ in range(2))
    _check_padded_equals_short(step, lambda: jax_moco.init_state(net, tx, 0),
                               {"x1": x1, "x2": x2, "progress": np.float32(1.0)},
                               ("params", "batch_stats", "ema_params", "ema_batch_stats"))


@pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
                    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
def test_a_pruned_run_compiles_its_train_step_for_two_batch_shapes_only(tmp_path, caplog):
    """Several mutation epochs whose last batches have different lengths: without padding each
    length is one more compilation of the step. --lr is this test's own, so the cached step of
    another test in this process is not reused and the count is this run's."""
    args = ["--framework", "jax", "--preset", "cpu-tiny", "--num-train", "600", "--num-test",
            "100", "--batch-size", "64", "--scan-warmup-epochs", "1", "--eval-every", "0",
            "--threads", "1", "--quiet", "--epochs", "6", "--lr", "0.000731"]
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        assert jax_clip.main(args + ["--out", str(tmp_path / "run")]) == 0
    compiles = [r.getMessage() for r in caplog.records
                if "Compiling jit(train_step)" in r.getMessage()]
    rows = metrics_rows(tmp_path / "run")
    last_lengths = {r["num_kept"] % 64 for r in rows} - {0}
    assert len(last_lengths) >= 3, rows  # the run does exercise several short last batches
    assert len(compiles) == 2, compiles  # the full batch and the padded one
