"""The paper's GPU presets, built at full size on the CPU: exact parameter counts against the
published ones, one forward shape each; gradient checkpointing and the accel switches on small
configs.

Published counts (exact integers; see `ClipPreset.source` / `MocoPreset.source`):
- CLIP RN50 102,007,137 (image 38,316,896), RN101 119,688,033, ViT-B/32 151,277,313 (image
  87,849,216): the parameter sums of OpenAI's released models (`clip.load`), which open_clip's
  docs/model_profile.csv lists rounded: 102.01 / 119.69 / 151.28 M total, 63.69 / 63.43 M text.
- MoCo v3 ViT-S/16 and ViT-B/16: timm vit_small_patch16_224 22,050,664 and
  vit_base_patch16_224 86,567,656 (torchvision vit_b_16 too) with a 1000-way head of 385,000 /
  769,000 parameters; MoCo v3 (vits.py) builds on timm's ViT and drops that head.
Tolerance: none. A count is a deterministic function of the layer shapes, so a mismatch of even
one bias or LayerNorm is an architecture difference; a tolerance would only hide it.

Cost (2 CPU cores): each full-size module fixture builds once (1-3 s) and runs one forward
(1-7 s); the module holds one full-size model at a time.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch

from reference_trainers.clip.model import CLIP, check_clip_model
from reference_trainers.common.accel import (AccelError, AmpSetup, make_grad_scaler,
                                             maybe_compile, set_grad_checkpointing,
                                             unwrap_compiled)
from reference_trainers.models import (CLIP_PRESETS, MOCO_PRESETS, CLIPTextTransformer,
                                       ModelConfigError, ModifiedResNet, VisionTransformer,
                                       build_clip, build_moco_backbone,
                                       sincos_2d_position_embedding)
from scan_core import ScanConfig

# open_clip docs/model_profile.csv, in millions: (total, image, text).
OPEN_CLIP_PROFILE = {"RN50": (102.01, 38.32, 63.69), "RN101": (119.69, 56.26, 63.43),
                     "ViT-B-32": (151.28, 87.85, 63.43)}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module", params=sorted(CLIP_PRESETS))
def clip_model(request):
    torch.manual_seed(0)
    return request.param, build_clip(request.param)


@pytest.fixture(scope="module", params=sorted(MOCO_PRESETS))
def moco_backbone(request):
    torch.manual_seed(0)
    return request.param, build_moco_backbone(request.param)


# ---- full-size presets ------------------------------------------------------------------------

def test_clip_parameter_counts_match_published_exactly(clip_model):
    name, model = clip_model
    preset = CLIP_PRESETS[name]
    total, image, text = _count(model), _count(model.visual), _count(model.text)
    assert (total, image) == (preset.published_params, preset.published_image_params)
    assert total == image + text + 1  # + the logit scale
    profile = OPEN_CLIP_PROFILE[name]
    assert [round(n / 1e6, 2) for n in (total, image, text)] == list(profile)


def test_clip_forward_shapes_at_native_resolution(clip_model):
    name, model = clip_model
    preset = CLIP_PRESETS[name]
    check_clip_model(model)
    model.eval()
    tokens = torch.zeros(2, 77, dtype=torch.int64)
    tokens[:, 0], tokens[:, 1:6], tokens[:, 6] = 49406, 320, 49407  # <sot> words <eot> pad
    with torch.no_grad():
        image = model.encode_image(torch.randn(1, 3, preset.image_size, preset.image_size))
        text = model.encode_text(tokens)
    assert image.shape == (1, preset.embed_dim) and text.shape == (2, preset.embed_dim)
    assert torch.allclose(image.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert math.isclose(model.logit_scale_value().item(), 1 / 0.07, rel_tol=1e-5)


def test_moco_backbone_parameter_counts_match_published_exactly(moco_backbone):
    name, model = moco_backbone
    # MoCo v3 keeps the sin-cos table as a frozen parameter; ours is a buffer: add it back.
    assert isinstance(model.pos_embed, torch.Tensor)
    assert not isinstance(model.pos_embed, torch.nn.Parameter)
    assert _count(model) + model.pos_embed.numel() == MOCO_PRESETS[name].published_params
    # MoCo v3's --stop-grad-conv1: the patch projection stays fixed, everything else trains.
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["patch_embed.weight", "patch_embed.bias"]


def test_moco_backbone_forward_shape(moco_backbone):
    name, model = moco_backbone
    batch = 2 if name == "vit_small" else 1
    model.eval()
    with torch.no_grad():
        features = model(torch.randn(batch, 3, 224, 224))
    assert model.out_dim == MOCO_PRESETS[name].width
    assert features.shape == (batch, model.out_dim)


def test_scan_defaults_are_the_authors():
    for preset in CLIP_PRESETS.values():
        assert preset.scan == ScanConfig.clip()
    for preset in MOCO_PRESETS.values():
        assert preset.scan == ScanConfig.moco()
    rn50 = CLIP_PRESETS["RN50"].scan
    assert (rn50.rho_low, rn50.rho_high, rn50.t_cos, rn50.warmup_threshold) == (0.30, 0.30, 3, 0.3)
    vit_base = MOCO_PRESETS["vit_base"].scan
    assert (vit_base.rho_low, vit_base.rho_high) == (0.35, 0.35)


def test_unknown_preset_names_are_refused_with_the_choices():
    with pytest.raises(ModelConfigError, match="RN101, RN50, ViT-B-32"):
        build_clip("ViT-B-16")
    with pytest.raises(ModelConfigError, match="vit_base, vit_small"):
        build_moco_backbone("vit_large")


# ---- small configs: towers, checkpointing -----------------------------------------------------

def _small_vit(**kwargs) -> VisionTransformer:
    return VisionTransformer(image_size=32, patch_size=8, width=32, layers=3, heads=4,
                             **kwargs)


def _small_text(**kwargs) -> CLIPTextTransformer:
    return CLIPTextTransformer(vocab_size=50, context_length=12, width=32, layers=3, heads=4,
                               embed_dim=16, eot_id=49, **kwargs)


def _outputs_and_grads(model, inputs):
    model.zero_grad()
    out = model(inputs)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None}


@pytest.mark.parametrize("make", ["vit", "text"])
def test_grad_checkpointing_gives_the_same_outputs_and_gradients(make):
    torch.manual_seed(0)
    if make == "vit":
        model, inputs = _small_vit(output_dim=16), torch.randn(3, 3, 32, 32)
    else:
        model, inputs = _small_text(), torch.randint(0, 49, (3, 12))
        inputs[:, 7] = 49
    plain_out, plain_grads = _outputs_and_grads(model, inputs)
    model.set_grad_checkpointing(True)
    ckpt_out, ckpt_grads = _outputs_and_grads(model, inputs)
    assert torch.allclose(plain_out, ckpt_out, atol=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, ckpt_grads[name], atol=1e-6), name


def test_text_tower_reads_the_eot_token_and_ignores_what_follows():
    torch.manual_seed(0)
    text = _small_text().eval()
    tokens = torch.tensor([[3, 4, 49, 7, 8, 9], [5, 49, 1, 1, 1, 1]])
    changed = tokens.clone()
    changed[0, 3:], changed[1, 2:] = 11, 12
    trimmed = _small_text(trim_to_longest=True).eval()
    trimmed.load_state_dict(text.state_dict())
    with torch.no_grad():
        assert torch.allclose(text(tokens), text(changed), atol=1e-6)
        assert torch.allclose(text(tokens), trimmed(tokens), atol=1e-6)
    with pytest.raises(ModelConfigError, match="context_length=12"):
        text(torch.zeros(1, 13, dtype=torch.int64))


def test_sincos_position_embedding_is_fixed_and_follows_the_formula():
    table = sincos_2d_position_embedding(grid_size=3, width=8)
    assert table.shape == (9, 8)
    # patch at row 2, column 1 (index 7); omega = [1, 1e-2] for width/4 = 2
    row, col, omega = 2.0, 1.0, torch.tensor([1.0, 1e-2])
    expected = torch.cat([(col * omega).sin(), (col * omega).cos(),
                          (row * omega).sin(), (row * omega).cos()])
    assert torch.allclose(table[7], expected, atol=1e-6)
    vit = _small_vit(position_embedding="sincos")
    assert "pos_embed" not in dict(vit.named_parameters())
    assert torch.equal(vit.pos_embed[0, 0], torch.zeros(32))
    with pytest.raises(ModelConfigError, match="divisible by 4"):
        sincos_2d_position_embedding(grid_size=2, width=6)


def test_small_resnet_shape_and_refused_sizes():
    net = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=24, heads=2, image_size=64, width=8)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 24)
    with pytest.raises(ModelConfigError, match="built for 2x2"):
        net(torch.randn(1, 3, 96, 96))
    with pytest.raises(ModelConfigError, match="multiple of 32"):
        ModifiedResNet(image_size=100)
    with pytest.raises(ModelConfigError, match="built for 32x32"):
        _small_vit()(torch.randn(1, 3, 64, 64))


# ---- accel ------------------------------------------------------------------------------------

def test_bf16_autocast_runs_a_forward_on_cpu():
    torch.manual_seed(0)
    vit = _small_vit(output_dim=16)
    amp = AmpSetup.create("bf16", device_type="cpu")
    assert amp.scaler is None and amp.dtype is torch.bfloat16
    with amp.autocast():
        out = vit(torch.randn(2, 3, 32, 32))
    assert out.dtype is torch.bfloat16 and out.shape == (2, 16)
    assert torch.isfinite(out.float()).all()


def test_grad_scaler_only_for_fp16_with_cuda():
    assert make_grad_scaler("fp16", cuda_available=False) is None
    assert make_grad_scaler("bf16", cuda_available=True) is None
    assert make_grad_scaler("fp32", cuda_available=True) is None
    # Without CUDA, torch warns that the scaler it builds is disabled.
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else nullcontext():
        scaler = make_grad_scaler("fp16", cuda_available=True)
    assert isinstance(scaler, torch.amp.GradScaler)
    assert AmpSetup.create("fp16", device_type="cpu").scaler is None
    with pytest.raises(AccelError, match="'fp8'"):
        make_grad_scaler("fp8")


def test_fp32_backward_step_updates_without_a_scaler():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    before = layer.weight.detach().clone()
    amp = AmpSetup.create("fp32", device_type="cpu")
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    with amp.autocast():
        loss = layer(torch.randn(8, 4)).pow(2).mean()
    amp.backward_step(loss, optimizer, max_grad_norm=1.0, parameters=layer.parameters())
    assert not torch.equal(before, layer.weight)
    with pytest.raises(AccelError, match="parameters"):
        amp.backward_step(loss, optimizer, max_grad_norm=1.0)


def test_maybe_compile_and_unwrap():
    model = torch.nn.Linear(2, 2)
    assert maybe_compile(model, False) is model
    compiled = maybe_compile(model, True)  # lazy: nothing compiles until it is called
    assert compiled is not model and unwrap_compiled(compiled) is model
    assert unwrap_compiled(model) is model


def test_set_grad_checkpointing_switches_every_transformer_tower():
    model = CLIP(_small_vit(output_dim=16), _small_text())
    assert set_grad_checkpointing(model, True) == 2
    assert model.visual.grad_checkpointing and model.text.grad_checkpointing
    assert set_grad_checkpointing(model, False) == 2 and not model.text.grad_checkpointing
    resnet = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=8, heads=2, image_size=32, width=8)
    assert set_grad_checkpointing(resnet, False) == 0
    with pytest.raises(AccelError, match="ModifiedResNet has no module"):
        set_grad_checkpointing(resnet, True)
