"""MoCo v3's pieces: model shapes, the momentum encoder, LARS, two-crop augmentations."""

import math

import pytest
import torch
from torch import nn

from adapters.torch import moco_loss
from reference_trainers.common.augment import CropView, two_crops
from reference_trainers.common.errors import TrainerError
from reference_trainers.moco.model import (MoCo, SmallResNet, VitTiny, build_mlp, build_moco,
                                           moco_momentum)
from reference_trainers.moco.optim import LARS, build_optimizer


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("backbone", ["resnet", "vit-tiny"])
def test_shapes_of_both_backbones(backbone):
    torch.manual_seed(0)
    model = build_moco(backbone, width=8, dim=16, mlp_dim=32)
    x = torch.randn(6, 1, 28, 28)
    outputs = model(x, x.flip(-1), momentum=0.99)
    assert [tuple(t.shape) for t in outputs] == [(6, 16)] * 4
    assert model.encode_image(x).shape == (6, model.backbone.out_dim)
    assert SmallResNet(8).out_dim == 32 and VitTiny().out_dim == 96


def test_projector_ends_in_a_batchnorm_without_affine_and_predictor_without_bn():
    projector = build_mlp(3, 8, 16, 4, last_bn=True)
    assert isinstance(projector[-1], nn.BatchNorm1d) and not projector[-1].affine
    assert all(not isinstance(m, nn.Linear) or m.bias is None for m in projector)
    predictor = build_mlp(2, 4, 16, 4, last_bn=False)
    assert isinstance(predictor[-1], nn.Linear)


def test_any_backbone_with_out_dim_plugs_in_and_one_without_is_refused():
    class Flat(nn.Module):
        out_dim = 12

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(28 * 28, 12)

        def forward(self, x):
            return self.linear(x.flatten(1))

    model = MoCo(Flat(), dim=8, mlp_dim=16)
    x = torch.randn(4, 1, 28, 28)
    assert model(x, x, 0.9)[0].shape == (4, 8)
    with pytest.raises(TypeError, match="out_dim"):
        MoCo(nn.Linear(3, 3))
    with pytest.raises(TrainerError, match="vit-tiny"):
        build_moco("resnet-9000")


def test_momentum_schedule_is_cosine_from_m0_to_one():
    assert moco_momentum(0.99, 0.0, 10) == pytest.approx(0.99)
    assert moco_momentum(0.99, 5.0, 10) == pytest.approx(0.995)
    assert moco_momentum(0.99, 10.0, 10) == pytest.approx(1.0)
    assert moco_momentum(0.99, 2.5, 10) == pytest.approx(
        1 - 0.01 * (math.cos(math.pi * 0.25) + 1) / 2)
    values = [moco_momentum(0.9, t / 7, 3) for t in range(22)]
    assert values == sorted(values)


def test_momentum_update_is_an_ema_and_keys_get_no_gradient():
    torch.manual_seed(0)
    model = build_moco("resnet", width=4, dim=8, mlp_dim=16)
    with torch.no_grad():                                    # make base and momentum differ
        for p in model.base_encoder.parameters():
            p.add_(torch.randn_like(p))
    before_q = [p.detach().clone() for p in model.base_encoder.parameters()]
    before_k = [p.detach().clone() for p in model.momentum_encoder.parameters()]
    x = torch.randn(4, 1, 28, 28)
    q1, q2, k1, k2 = model(x, x, momentum=0.75)
    for q, k_old, k_new in zip(before_q, before_k, model.momentum_encoder.parameters()):
        torch.testing.assert_close(k_new, 0.75 * k_old + 0.25 * q)
    assert not k1.requires_grad and not k2.requires_grad and q1.requires_grad
    moco_loss(q1, q2, k1, k2, 0.2).loss.backward()
    assert all(p.grad is None for p in model.momentum_encoder.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())


def test_lars_matches_a_hand_computation():
    weight = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))   # ||w|| = 5
    bias = nn.Parameter(torch.tensor([1.0, -1.0]))
    optimizer = LARS([weight, bias], lr=0.5, weight_decay=0.1, momentum=0.9,
                     trust_coefficient=0.01)
    grad_w, grad_b = torch.tensor([[0.2, 0.1], [0.0, -0.4]]), torch.tensor([0.3, 0.2])
    for step in range(2):
        weight.grad, bias.grad = grad_w.clone(), grad_b.clone()
        optimizer.step()
    # step 1: g = grad + 0.1 w; trust = 0.01 * ||w|| / ||g||; mu = trust g; w -= 0.5 mu
    w0 = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    g0 = grad_w + 0.1 * w0
    mu = 0.01 * w0.norm() / g0.norm() * g0
    w1 = w0 - 0.5 * mu
    g1 = grad_w + 0.1 * w1
    mu = 0.9 * mu + 0.01 * w1.norm() / g1.norm() * g1
    torch.testing.assert_close(weight.detach(), w1 - 0.5 * mu)
    # the bias skips weight decay and trust ratio: momentum SGD
    b1 = torch.tensor([1.0, -1.0]) - 0.5 * grad_b
    torch.testing.assert_close(bias.detach(), b1 - 0.5 * (0.9 * grad_b + grad_b))


def test_lars_state_round_trips_and_bad_options_are_refused():
    w = nn.Parameter(torch.ones(2, 2))
    w.grad = torch.ones(2, 2)
    optimizer = build_optimizer("lars", [w], lr=0.1, weight_decay=0.0)
    optimizer.step()
    again = build_optimizer("lars", [w], lr=0.1, weight_decay=0.0)
    again.load_state_dict(optimizer.state_dict())
    torch.testing.assert_close(again.state[w]["mu"], optimizer.state[w]["mu"])
    with pytest.raises(TrainerError, match="momentum"):
        LARS([w], momentum=-1)
    with pytest.raises(TrainerError, match="adamw"):
        build_optimizer("sgd", [w], lr=0.1, weight_decay=0.0)


def test_two_crops_are_reproducible_for_a_seed_and_differ_from_each_other():
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    a1, a2 = two_crops(images, generator=torch.Generator().manual_seed(3))
    b1, b2 = two_crops(images, generator=torch.Generator().manual_seed(3))
    c1, _ = two_crops(images, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, c1)
    assert a1.shape == images.shape and a1.dtype == torch.float32
    assert ((a1 - a2).abs().flatten(1).amax(1) > 0.1).all()          # every sample's crops differ


def test_an_identity_view_returns_the_image():
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    identity = CropView(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                        blur_p=0.0, noise_p=0.0)
    x1, _ = two_crops(images, generator=torch.Generator().manual_seed(0),
                      views=(identity, identity), normalise=False)
    torch.testing.assert_close(x1, images.float() / 255, atol=1e-5, rtol=0)
    flip = CropView(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0.0,
                    blur_p=0.0, noise_p=0.0)
    x1, _ = two_crops(images, generator=torch.Generator().manual_seed(0),
                      views=(flip, identity), normalise=False)
    torch.testing.assert_close(x1, images.float().flip(-1) / 255, atol=1e-5, rtol=0)
