"""A padded batch (adapters.jax.pad_batch + the losses' and the recorder's `valid`): a short
batch padded to the full size computes what the short batch computes, to float rounding, so a
jitted step keeps one shape however many ids a pruned epoch leaves in its last batch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

from adapters.jax import AsyncRecorder, clip_loss, moco_loss, pad_batch  # noqa: E402
from scan_core import ScanConfig, ScanPruner  # noqa: E402
from scan_core.errors import ScanInputError  # noqa: E402

B, D = 8, 4
TOL = dict(rtol=1e-5, atol=1e-6)


def _clip(image, text, scale, weights, valid):
    out = clip_loss(image, text, scale, weights=weights, valid=valid)
    return out.loss, out.per_sample


def _moco(q1, q2, k1, k2, weights, valid):
    out = moco_loss(q1, q2, k1, k2, 0.3, weights=weights, valid=valid)
    return out.loss, out.per_sample


# One compilation per (shape, weights or not, valid or not): valid is a traced argument.
_clip_grad = jax.jit(jax.value_and_grad(_clip, argnums=(0, 1, 2), has_aux=True))
_moco_grad = jax.jit(jax.value_and_grad(_moco, argnums=(0, 1), has_aux=True))


def _features(seed, n, count):
    rng = np.random.default_rng(seed)
    out = [rng.standard_normal((n, D)).astype(np.float32) for _ in range(count)]
    return [x / np.linalg.norm(x, axis=1, keepdims=True) for x in out]


def _weights(seed, n, weighted):
    rng = np.random.default_rng(seed + 1)
    return rng.choice([1.0, 2.0], size=n).astype(np.float32) if weighted else None


# == pad_batch ====================================================================================
@given(n=st.integers(1, 12), extra=st.integers(0, 12))
def test_pad_batch_keeps_the_real_rows_first_and_pads_with_copies_of_them(n, extra):
    size = n + extra
    images = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    tokens = np.arange(n)
    padded, valid = pad_batch({"images": images, "tokens": tokens, "progress": np.float32(0.5)},
                              size)
    assert valid.dtype == np.bool_ and valid.shape == (size,) and valid.sum() == n
    assert valid[:n].all()
    np.testing.assert_array_equal(padded["images"][:n], images)
    np.testing.assert_array_equal(padded["tokens"], np.arange(size) % n)
    np.testing.assert_array_equal(padded["images"], images[np.arange(size) % n])
    assert padded["progress"] == np.float32(0.5)


@pytest.mark.parametrize("batch, size, message", [
    ({"x": np.zeros(5)}, 4, "5 rows cannot be padded to 4"),
    ({"x": np.zeros(0)}, 4, "0 rows cannot be padded"),
    ({"x": np.zeros(3), "y": np.zeros(2)}, 4, "the same length"),
    ({"progress": np.float32(0)}, 4, "only scalars"),
    ({"x": np.zeros(3)}, 0, "size must be an int >= 1"),
    ({"x": np.zeros(3)}, True, "size must be an int >= 1"),
])
def test_pad_batch_refuses_what_it_cannot_pad_naming_it(batch, size, message):
    with pytest.raises(ValueError, match=message):
        pad_batch(batch, size)


# == The losses ===================================================================================
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, B), seed=st.integers(0, 2**16), weighted=st.booleans(),
       scale=st.sampled_from([1.0, 14.3, 100.0]))
def test_a_padded_clip_batch_gives_the_short_batchs_loss_rows_and_gradients(n, seed, weighted,
                                                                             scale):
    image, text = _features(seed, n, 2)
    weights = _weights(seed, n, weighted)
    (loss, rows), grads = _clip_grad(image, text, jnp.float32(scale), weights, None)
    padded, valid = pad_batch({"image": image, "text": text,
                               **({"weights": weights} if weighted else {})}, B)
    (p_loss, p_rows), p_grads = _clip_grad(padded["image"], padded["text"], jnp.float32(scale),
                                           padded.get("weights"), valid)
    np.testing.assert_allclose(p_loss, loss, **TOL)
    np.testing.assert_allclose(np.asarray(p_rows)[:, :n], rows, **TOL)
    np.testing.assert_array_equal(np.asarray(p_rows)[:, n:], 0.0)
    for got, want in zip(p_grads[:2], grads[:2]):  # the features' gradients, row by row
        np.testing.assert_allclose(np.asarray(got)[:n], want, **TOL)
        np.testing.assert_array_equal(np.asarray(got)[n:], 0.0)  # padding learns nothing
    np.testing.assert_allclose(p_grads[2], grads[2], **TOL)  # the scale's


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, B), seed=st.integers(0, 2**16), weighted=st.booleans())
def test_a_padded_moco_batch_gives_the_short_batchs_loss_rows_and_gradients(n, seed, weighted):
    q1, q2, k1, k2 = _features(seed, n, 4)
    weights = _weights(seed, n, weighted)
    (loss, rows), grads = _moco_grad(q1, q2, k1, k2, weights, None)
    padded, valid = pad_batch({"q1": q1, "q2": q2, "k1": k1, "k2": k2,
                               **({"weights": weights} if weighted else {})}, B)
    (p_loss, p_rows), p_grads = _moco_grad(padded["q1"], padded["q2"], padded["k1"],
                                           padded["k2"], padded.get("weights"), valid)
    np.testing.assert_allclose(p_loss, loss, **TOL)
    np.testing.assert_allclose(np.asarray(p_rows)[:, :n], rows, **TOL)
    np.testing.assert_array_equal(np.asarray(p_rows)[:, n:], 0.0)
    for got, want in zip(p_grads, grads):
        np.testing.assert_allclose(np.asarray(got)[:n], want, **TOL)
        np.testing.assert_array_equal(np.asarray(got)[n:], 0.0)


def test_an_all_true_valid_mask_is_the_unpadded_loss():
    image, text = _features(3, B, 2)
    (loss, rows), _ = _clip_grad(image, text, jnp.float32(10.0), None, None)
    (m_loss, m_rows), _ = _clip_grad(image, text, jnp.float32(10.0), None, np.ones(B, bool))
    np.testing.assert_allclose(m_loss, loss, **TOL)
    np.testing.assert_allclose(m_rows, rows, **TOL)


@pytest.mark.parametrize("valid", [np.ones(B - 1, bool), np.ones(B, np.float32),
                                   np.ones((B, 1), bool)])
def test_a_valid_mask_of_the_wrong_shape_or_dtype_is_refused(valid):
    image, text = _features(0, B, 2)
    with pytest.raises(ValueError, match="valid must be a"):
        clip_loss(image, text, 10.0, valid=valid)
    with pytest.raises(ValueError, match="valid must be a"):
        moco_loss(image, text, image, text, valid=valid)


# == The recorder =================================================================================
def _pruner():
    pruner = ScanPruner(5, 2, ScanConfig(warmup_epochs=0, seed=1))
    pruner.plan_epoch(0)
    return pruner


def test_the_recorder_records_a_padded_batchs_real_columns_with_their_ids():
    rng = np.random.default_rng(0)
    ids = np.array([3, 0, 4, 1, 2])
    losses = rng.uniform(0.5, 3.0, size=(2, len(ids))).astype(np.float32)
    padded, valid = pad_batch({"ids": ids, "losses": losses.T}, B)
    per_sample = jnp.asarray(np.where(valid, padded["losses"].T, 0.0))
    reference = _pruner()
    reference.record(ids, losses)
    want = reference.end_epoch()
    recorder = AsyncRecorder(_pruner())
    recorder.push(ids, per_sample, valid=valid)
    got = recorder.end_epoch()
    assert got.num_recorded == want.num_recorded == len(ids)
    assert got.mean_loss == pytest.approx(want.mean_loss, rel=1e-6)
    np.testing.assert_array_equal(recorder.pruner.candidate_ids(), reference.candidate_ids())


@pytest.mark.parametrize("valid, message", [
    (np.ones(B, bool), "one True per id"),              # 8 True for 5 ids
    (np.arange(B) < 5, None),                          # right: no error
    ((np.arange(B) < 5).astype(np.int8), "bool mask"),
])
def test_the_recorder_refuses_a_mask_that_does_not_match_the_ids(valid, message):
    recorder = AsyncRecorder(_pruner())
    ids, per_sample = np.arange(5), jnp.ones((2, B))
    if message is None:
        recorder.push(ids, per_sample, valid=valid)
        assert recorder.end_epoch().num_recorded == 5
        return
    with pytest.raises(ScanInputError, match=message):
        recorder.push(ids, per_sample, valid=valid)


def test_the_recorder_refuses_a_mask_of_another_batchs_length():
    recorder = AsyncRecorder(_pruner())
    recorder.push(np.arange(5), jnp.ones((2, B + 2)), valid=np.arange(B) < 5)
    with pytest.raises(ScanInputError, match="per_sample has 10 columns"):
        recorder.flush()
