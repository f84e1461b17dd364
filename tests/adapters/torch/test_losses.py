"""Per-sample InfoNCE (single process): the parts are the rows and columns of the loss, their
mean is the standard loss, and returning them changes no gradient."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from adapters.torch import clip_loss, moco_loss


def _features(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return img.requires_grad_(), txt.requires_grad_()


@given(b=st.integers(1, 40), d=st.integers(1, 16), seed=st.integers(0, 10**6),
       scale=st.floats(1.0, 100.0))
def test_clip_per_sample_by_hand(b, d, seed, scale):
    """per_sample[0, i] = -log softmax(s I T^T)[i, i]; per_sample[1, i] the same of T I^T."""
    img, txt = _features(b, d, seed)
    out = clip_loss(img, txt, scale)
    logits = (scale * img @ txt.T).detach()
    for i in range(b):
        row = logits[i]
        col = logits[:, i]
        assert math.isclose(out.per_sample[0, i].item(),
                            (torch.logsumexp(row, 0) - row[i]).item(), rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(out.per_sample[1, i].item(),
                            (torch.logsumexp(col, 0) - col[i]).item(), rel_tol=1e-9, abs_tol=1e-9)


@given(b=st.integers(1, 40), seed=st.integers(0, 10**6))
def test_clip_mean_is_the_standard_loss_and_gradients_are_unchanged(b, seed):
    img, txt = _features(b, 8, seed)
    scale = torch.tensor(14.3, dtype=torch.float64, requires_grad=True)
    out = clip_loss(img, txt, scale)
    logits = scale * img @ txt.T
    labels = torch.arange(b)
    standard = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(out.loss, standard) and torch.allclose(out.per_sample.mean(), standard)
    grads = torch.autograd.grad(out.loss, (img, txt, scale))
    want = torch.autograd.grad(standard, (img, txt, scale))
    for g, w in zip(grads, want):
        assert torch.allclose(g, w)


def test_clip_weights_scale_each_sample():
    img, txt = _features(6, 4, 0)
    w = torch.tensor([1.0, 2.0, 1.0, 1.0, 2.0, 1.0], dtype=torch.float64)
    out = clip_loss(img, txt, 10.0, weights=w)
    assert torch.allclose(out.loss, (out.per_sample * w).mean())


@given(b=st.integers(1, 30), seed=st.integers(0, 10**6), t=st.floats(0.05, 1.0))
def test_moco_per_sample_and_symmetric_loss(b, seed, t):
    """per_sample[0] = ctr(q1, k2), per_sample[1] = ctr(q2, k1), each the unreduced
    cross-entropy times 2T; loss = the sum of their means (MoCo v3)."""
    g = torch.Generator().manual_seed(seed)
    q1, q2, k1, k2 = (torch.randn(b, 8, generator=g, dtype=torch.float64) for _ in range(4))
    out = moco_loss(q1, q2, k1, k2, t)

    def ctr(q, k):
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / t
        return F.cross_entropy(logits, torch.arange(b), reduction="none") * 2 * t

    assert torch.allclose(out.per_sample[0], ctr(q1, k2))
    assert torch.allclose(out.per_sample[1], ctr(q2, k1))
    assert torch.allclose(out.loss, ctr(q1, k2).mean() + ctr(q2, k1).mean())


def test_moco_keys_get_no_gradient():
    q1, q2, k1, k2 = (torch.randn(5, 4, requires_grad=True) for _ in range(4))
    moco_loss(q1, q2, k1, k2).loss.backward()
    assert q1.grad is not None and k1.grad is None and k2.grad is None


@pytest.mark.parametrize("fn", ["clip", "moco"])
def test_a_loss_without_batch_dimension_is_refused(fn):
    v = torch.randn(8)
    with pytest.raises(ValueError, match="batch dimension"):
        if fn == "clip":
            clip_loss(v, v, 1.0)
        else:
            moco_loss(v, v, v, v)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same"):
        clip_loss(torch.randn(4, 3), torch.randn(5, 3), 1.0)


def test_record_refuses_ids_that_do_not_match_the_batch():
    """record(pruner, ids, per_sample) with fewer ids than loss columns names both shapes."""
    from adapters.torch import record
    from scan_core import ScanInputError, ScanPruner

    pruner = ScanPruner(100, 2)
    pruner.plan_epoch(0)
    out = clip_loss(*_features(8, 4, 0), 10.0)
    with pytest.raises(ScanInputError, match=r"\(2, 7\)"):
        record(pruner, torch.arange(7), out.per_sample)
    record(pruner, torch.arange(8), out.per_sample)  # the matching batch is accepted
    assert pruner.end_epoch().num_recorded == 8
