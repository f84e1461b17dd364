"""The paper's GPU models (PyTorch): `CLIP` (two towers joined, and the contract any CLIP
model meets), CLIP's modified ResNet and ViT image towers, CLIP's text
transformer, MoCo v3's ViT backbones, and the named presets that build them with the authors'
SCAN defaults. Imports torch; see docs/gpu-presets.md.

    >>> from reference_trainers.models import build_clip, build_moco_backbone
    >>> clip = build_clip("ViT-B-32")                 # doctest: +SKIP
    >>> backbone = build_moco_backbone("vit_small")   # doctest: +SKIP
"""

from reference_trainers.models.clip import CLIP, check_clip_model
from reference_trainers.models.clip_resnet import AttentionPool2d, Bottleneck, ModifiedResNet
from reference_trainers.models.presets import (CLIP_PRESETS, CLIP_SCAN_DEFAULTS, MOCO_PRESETS,
                                               MOCO_SCAN_DEFAULTS, ClipPreset, MocoPreset,
                                               build_clip, build_moco_backbone,
                                               clip_preset, moco_preset)
from reference_trainers.models.text import CLIPTextTransformer
from reference_trainers.models.vit import (ModelConfigError, TransformerBlock,
                                           VisionTransformer, run_blocks,
                                           sincos_2d_position_embedding)

__all__ = [
    "CLIP_PRESETS", "CLIP_SCAN_DEFAULTS", "MOCO_PRESETS", "MOCO_SCAN_DEFAULTS",
    "AttentionPool2d", "Bottleneck", "CLIP", "CLIPTextTransformer", "ClipPreset", "MocoPreset",
    "ModelConfigError", "ModifiedResNet", "TransformerBlock",
    "VisionTransformer", "build_clip", "build_moco_backbone", "check_clip_model", "clip_preset",
    "moco_preset",
    "run_blocks", "sincos_2d_position_embedding",
]
