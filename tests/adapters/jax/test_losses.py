"""Per-sample InfoNCE in jnp equals the torch adapter's: values, per-sample parts and gradients
to 1e-5 in float32 (torch is the reference; its own tests hold it to the by-hand formulas), it
jits, and bad shapes fail at trace time naming the argument."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import adapters.torch as adapters_torch  # noqa: E402
from adapters.jax import ContrastiveLoss, clip_loss, moco_loss  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


# Module-level jitted functions: scale, temperature and weights are traced arguments, so the
# parametrised cases below compile once per batch size (and weights or not), keeping CI fast.
def _clip_parts(image_features, text_features, logit_scale, weights):
    out = clip_loss(image_features, text_features, logit_scale, weights=weights)
    return out.loss, out.per_sample


def _moco_parts(q1, q2, k1, k2, temperature, weights):
    out = moco_loss(q1, q2, k1, k2, temperature, weights=weights)
    return out.loss, out.per_sample


_clip_value_and_grad = jax.jit(jax.value_and_grad(_clip_parts, argnums=(0, 1, 2), has_aux=True))
_moco_value_and_grad = jax.jit(jax.value_and_grad(_moco_parts, argnums=(0, 1, 2, 3),
                                                  has_aux=True))


def _normalised(rng, b, d):
    x = rng.standard_normal((b, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _weights(rng, b, weighted):
    return rng.choice([1.0, 1.0, 1.5], size=b).astype(np.float32) if weighted else None


def _t(x, grad=False):
    return None if x is None else torch.tensor(x, requires_grad=grad)


def _j(x):
    return None if x is None else jnp.asarray(x)


@pytest.mark.parametrize("b", [1, 7, 64])
@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_clip_matches_torch_values_and_gradients(b, scale, weighted):
    rng = np.random.default_rng(b * 1000 + int(scale))
    img, txt, w = _normalised(rng, b, 24), _normalised(rng, b, 24), _weights(rng, b, weighted)
    ti, tt, ts = _t(img, True), _t(txt, True), torch.tensor(np.float32(scale), requires_grad=True)
    want = adapters_torch.clip_loss(ti, tt, ts, weights=_t(w))
    want_grads = torch.autograd.grad(want.loss, (ti, tt, ts))

    (value, per_sample), grads = _clip_value_and_grad(jnp.asarray(img), jnp.asarray(txt),
                                                      jnp.float32(scale), _j(w))
    assert per_sample.shape == (2, b) and per_sample.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(per_sample), want.per_sample.detach().numpy(), **TOL)
    np.testing.assert_allclose(float(value), want.loss.item(), **TOL)
    for g, w_ in zip(grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), w_.numpy(), **TOL)


@pytest.mark.parametrize("b", [1, 32])
@pytest.mark.parametrize("temperature", [0.1, 0.2, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_moco_matches_torch_values_and_gradients(b, temperature, weighted):
    rng = np.random.default_rng(b * 7 + int(temperature * 10))
    q1, q2, k1, k2 = (rng.standard_normal((b, 16)).astype(np.float32) * 3 for _ in range(4))
    w = _weights(rng, b, weighted)
    tq1, tq2 = _t(q1, True), _t(q2, True)
    want = adapters_torch.moco_loss(tq1, tq2, _t(k1), _t(k2), temperature, weights=_t(w))
    want_grads = torch.autograd.grad(want.loss, (tq1, tq2))

    (value, per_sample), grads = _moco_value_and_grad(*map(jnp.asarray, (q1, q2, k1, k2)),
                                                      jnp.float32(temperature), _j(w))
    np.testing.assert_allclose(np.asarray(per_sample), want.per_sample.detach().numpy(), **TOL)
    np.testing.assert_allclose(float(value), want.loss.item(), **TOL)
    np.testing.assert_allclose(np.asarray(grads[0]), want_grads[0].numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(grads[1]), want_grads[1].numpy(), **TOL)
    assert not np.asarray(grads[2]).any() and not np.asarray(grads[3]).any(), \
        "keys must get no gradient (stop_gradient, as MoCo v3's momentum encoder)"


def test_loss_is_the_mean_of_the_parts_and_a_named_tuple():
    rng = np.random.default_rng(0)
    img, txt = jnp.asarray(_normalised(rng, 8, 4)), jnp.asarray(_normalised(rng, 8, 4))
    out = jax.jit(clip_loss)(img, txt, 10.0)
    assert isinstance(out, ContrastiveLoss) and out == (out.loss, out.per_sample)
    np.testing.assert_allclose(float(out.loss), float(out.per_sample.mean()), rtol=1e-6)
    m = jax.jit(moco_loss)(img, txt, txt, img)
    np.testing.assert_allclose(float(m.loss), float(m.per_sample.mean(1).sum()), rtol=1e-6)


def test_clip_per_sample_is_the_row_and_column_cross_entropy():
    rng = np.random.default_rng(1)
    img, txt = _normalised(rng, 6, 5), _normalised(rng, 6, 5)
    out = jax.jit(clip_loss)(jnp.asarray(img), jnp.asarray(txt), 7.0)
    logits = torch.tensor(7.0 * img @ txt.T, dtype=torch.float64)
    labels = torch.arange(6)
    np.testing.assert_allclose(np.asarray(out.per_sample[0]),
                               F.cross_entropy(logits, labels, reduction="none").numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(out.per_sample[1]),
                               F.cross_entropy(logits.T, labels, reduction="none").numpy(), **TOL)


@pytest.mark.parametrize("call, message", [
    (lambda a, b: clip_loss(a[0], b, 1.0), r"image_features and text_features must be \(B, D\)"),
    (lambda a, b: clip_loss(a, b[:3], 1.0), r"image_features \(4, 2\) and text_features \(3, 2\)"),
    (lambda a, b: clip_loss(a, b, 1.0, weights=jnp.ones(3)), r"weights must have shape \(B,\)"),
    (lambda a, b: moco_loss(a, b[:, :1], a, b), r"q1 \(4, 2\) and q2 \(4, 1\)"),
    (lambda a, b: moco_loss(a, b, a[None], b), "k1 and k2 must be"),
    (lambda a, b: moco_loss(a, b, a[:2], b[:2]), r"q1 \(4, 2\) and k1 \(2, 2\)"),
    (lambda a, b: moco_loss(a, b, a, b, weights=jnp.ones((4, 1))), "weights must have shape"),
])
def test_bad_shapes_fail_at_trace_time_naming_the_argument(call, message):
    a, b = jnp.ones((4, 2)), jnp.ones((4, 2))
    with pytest.raises(ValueError, match=message):
        jax.jit(call)(a, b)
