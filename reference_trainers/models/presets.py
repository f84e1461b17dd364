"""The paper's GPU models as named presets, each with the authors' SCAN defaults.

CLIP (image tower + `CLIPTextTransformer`, joined by `reference_trainers.models.clip.CLIP`):
"RN50", "RN101", "ViT-B-32". MoCo v3 backbones (`VisionTransformer`, no head): "vit_small",
"vit_base". Architectures follow open_clip's model configs (RN50.json, RN101.json,
ViT-B-32.json) and MoCo v3's `vits.py`; `published_params` is the count the test checks.

SCAN defaults (arXiv 2411.09126, and `scan_core.ScanConfig.clip()` / `.moco()`): CLIP rho 0.30
at each end, T_cos 3, T_td 0.3; MoCo rho 0.35 at each end (T_cos and T_td as for CLIP).

Example:
    >>> from scan_core import ScanConfig
    >>> model = build_clip("RN50")  # doctest: +SKIP
    >>> preset = CLIP_PRESETS["RN50"]
    >>> preset.image_size, preset.embed_dim, preset.scan.rho_low
    (224, 1024, 0.3)
    >>> preset.scan == ScanConfig.clip()
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from reference_trainers.models.clip import CLIP
from reference_trainers.models.clip_resnet import ModifiedResNet
from reference_trainers.models.text import CLIPTextTransformer
from reference_trainers.models.vit import ModelConfigError, VisionTransformer
from scan_core import ScanConfig

__all__ = ["CLIP_PRESETS", "CLIP_SCAN_DEFAULTS", "MOCO_PRESETS", "MOCO_SCAN_DEFAULTS",
           "ClipPreset", "MocoPreset", "build_clip", "build_moco_backbone",
           "clip_preset", "moco_preset"]


# The authors' SCAN settings of each paradigm, as the trainers' configs hold them.
CLIP_SCAN_DEFAULTS = ScanConfig.clip()
# The paper gives MoCo's pruning share (35%); T_cos and T_td are those of ScanConfig.moco().
MOCO_SCAN_DEFAULTS = ScanConfig.moco()


@dataclasses.dataclass(frozen=True)
class ClipPreset:
    """One CLIP model of the paper. `vision` is "resnet" or "vit"; `vision_kwargs` go to
    ModifiedResNet / VisionTransformer; the text tower is CLIP's (12 x 512, 8 heads).
    published_params / published_image_params: exact counts of OpenAI's released model of the
    same architecture (logit scale included in the total); `source` says where they are from."""

    name: str
    vision: str
    vision_kwargs: Mapping[str, Any]
    embed_dim: int
    published_params: int
    published_image_params: int
    source: str
    image_size: int = 224
    scan: ScanConfig = CLIP_SCAN_DEFAULTS


@dataclasses.dataclass(frozen=True)
class MocoPreset:
    """One MoCo v3 ViT backbone of the paper (patch 16, 224 pixels, MLP ratio 4, 12 heads as in
    MoCo v3's `vits.py`). published_params: the backbone without a classification head, fixed
    position-embedding entries included (MoCo v3 stores them as a frozen parameter)."""

    name: str
    width: int
    layers: int
    heads: int
    published_params: int
    source: str
    patch_size: int = 16
    image_size: int = 224
    scan: ScanConfig = MOCO_SCAN_DEFAULTS


_OPENAI_COUNTS = ("OpenAI CLIP's released model (clip.load, sum of parameter sizes), matching "
                  "open_clip docs/model_profile.csv")
CLIP_PRESETS: dict[str, ClipPreset] = {
    "RN50": ClipPreset(
        name="RN50", vision="resnet", embed_dim=1024,
        vision_kwargs={"layers": (3, 4, 6, 3), "width": 64, "heads": 32},
        published_params=102_007_137, published_image_params=38_316_896,
        source=_OPENAI_COUNTS + " (102.01M total, 38.32M image, 63.69M text)"),
    "RN101": ClipPreset(
        name="RN101", vision="resnet", embed_dim=512,
        vision_kwargs={"layers": (3, 4, 23, 3), "width": 64, "heads": 32},
        published_params=119_688_033, published_image_params=56_259_936,
        source=_OPENAI_COUNTS + " (119.69M total, 56.26M image, 63.43M text); image = total "
               "- text 63,428,096 - logit scale 1"),
    "ViT-B-32": ClipPreset(
        name="ViT-B-32", vision="vit", embed_dim=512,
        vision_kwargs={"patch_size": 32, "width": 768, "layers": 12, "heads": 12},
        published_params=151_277_313, published_image_params=87_849_216,
        source=_OPENAI_COUNTS + " (151.28M total, 87.85M image, 63.43M text)"),
}

_TIMM = ("timm {model} / DeiT: {total:,} with the 1000-way head ({head:,}); MoCo v3 replaces "
         "the head, so the backbone has {backbone:,}")
MOCO_PRESETS: dict[str, MocoPreset] = {
    "vit_small": MocoPreset(
        name="vit_small", width=384, layers=12, heads=12, published_params=21_665_664,
        source=_TIMM.format(model="vit_small_patch16_224", total=22_050_664, head=385_000,
                            backbone=21_665_664)),
    "vit_base": MocoPreset(
        name="vit_base", width=768, layers=12, heads=12, published_params=85_798_656,
        source=_TIMM.format(model="vit_base_patch16_224 (torchvision vit_b_16 the same)",
                            total=86_567_656, head=769_000, backbone=85_798_656)),
}


def _lookup(table: Mapping[str, Any], name: str, kind: str) -> Any:
    if name not in table:
        raise ModelConfigError(f"unknown {kind} preset {name!r}; choose one of "
                               f"{', '.join(sorted(table))}")
    return table[name]


def clip_preset(name: str) -> ClipPreset:
    """The `ClipPreset` called `name` ("RN50", "RN101", "ViT-B-32")."""
    return _lookup(CLIP_PRESETS, name, "CLIP")


def moco_preset(name: str) -> MocoPreset:
    """The `MocoPreset` called `name` ("vit_small", "vit_base")."""
    return _lookup(MOCO_PRESETS, name, "MoCo")


def build_clip(name: str, *, grad_checkpointing: bool = False, vocab_size: int = 49408,
               context_length: int = 77, eot_id: int = 49407,
               trim_text_to_longest: bool = False) -> CLIP:
    """A freshly initialised CLIP of preset `name`: `encode_image` (B, 3, 224, 224) ->
    (B, embed_dim), `encode_text` (B, <=77) int64 -> (B, embed_dim), both L2-normalised, and
    `logit_scale` = log(1/0.07). The text defaults assume CLIP's BPE tokenizer.

    grad_checkpointing applies to the transformer towers (text; ViT image tower); the ResNet
    image towers are never checkpointed (see `ModifiedResNet`).
    """
    preset = clip_preset(name)
    kwargs = dict(preset.vision_kwargs)
    visual: nn.Module
    if preset.vision == "resnet":
        visual = ModifiedResNet(output_dim=preset.embed_dim, image_size=preset.image_size,
                                **kwargs)
    else:
        # CLIP's ViT: bias-free patch conv, ln_pre, learned positions, LayerNorm eps 1e-5.
        visual = VisionTransformer(image_size=preset.image_size, output_dim=preset.embed_dim,
                                   position_embedding="learned", pre_norm=True,
                                   patch_bias=False, norm_eps=1e-5,
                                   grad_checkpointing=grad_checkpointing, **kwargs)
    text = CLIPTextTransformer(vocab_size=vocab_size, context_length=context_length,
                               embed_dim=preset.embed_dim, eot_id=eot_id,
                               trim_to_longest=trim_text_to_longest,
                               grad_checkpointing=grad_checkpointing)
    return CLIP(visual, text)


def build_moco_backbone(name: str, *, grad_checkpointing: bool = False,
                        freeze_patch_embed: bool = True,
                        position_embedding: str = "sincos") -> VisionTransformer:
    """A freshly initialised MoCo v3 ViT backbone: (B, 3, 224, 224) -> (B, out_dim), the
    normalised class token; `out_dim` is 384 (vit_small) or 768 (vit_base).

    Defaults follow MoCo v3's reference setups (their CONFIG.md): fixed 2-D sin-cos positions
    and a frozen random patch projection (`--stop-grad-conv1`); LayerNorm eps 1e-6, qkv bias.
    """
    preset = moco_preset(name)
    return VisionTransformer(
        image_size=preset.image_size, patch_size=preset.patch_size, width=preset.width,
        layers=preset.layers, heads=preset.heads, output_dim=None,
        position_embedding=position_embedding,  # type: ignore[arg-type]
        pre_norm=False, patch_bias=True, freeze_patch_embed=freeze_patch_embed, norm_eps=1e-6,
        grad_checkpointing=grad_checkpointing)
