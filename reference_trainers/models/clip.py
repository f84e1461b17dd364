"""CLIP: two towers and a learnable temperature, and the contract any CLIP model meets.

The trainer needs only three things of a model (see `check_clip_model`): `encode_image`,
`encode_text` and a `logit_scale` parameter holding log(scale), as in CLIP (Radford et al.
2021, section 2.5) and open_clip. An open_clip model therefore drops in for ours unchanged.
The towers are the cpu preset's (reference_trainers/clip/model.py) or the paper's GPU models
(presets.py); both are joined here, on the models' floor, below the trainers.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = CLIP(nn.Linear(8, 4), nn.Embedding(10, 4))
    >>> check_clip_model(model)
    >>> round(model.logit_scale_value().item(), 2)
    14.29
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CLIP", "check_clip_model"]


class CLIP(nn.Module):
    """Two towers and a learnable temperature (CLIP, Radford et al. 2021, section 2.5).

    `logit_scale` stores log(scale), initialised to log(1/0.07); the scale used is
    exp(logit_scale) clamped to exp(max_logit_scale) = 100, so it cannot blow up.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, *,
                 init_logit_scale: float = math.log(1 / 0.07),
                 max_logit_scale: float = math.log(100)):
        super().__init__()
        self.visual = image_encoder
        self.text = text_encoder
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.max_logit_scale = float(max_logit_scale)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32 -> (B, D) float32, L2-normalised rows."""
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 -> (B, D) float32, L2-normalised rows."""
        return F.normalize(self.text(tokens), dim=-1)

    def logit_scale_value(self) -> torch.Tensor:
        """Scalar float32 tensor exp(min(logit_scale, max_logit_scale)); gradient flows below
        the cap."""
        return self.logit_scale.clamp(max=self.max_logit_scale).exp()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (image_features (B, D), text_features (B, D), logit_scale scalar)."""
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale_value()


def check_clip_model(model: object) -> None:
    """Raise TypeError unless `model` offers what the trainer calls: callable `encode_image`
    and `encode_text`, and a `logit_scale` tensor holding log(scale) (ours and open_clip's)."""
    missing = [name for name in ("encode_image", "encode_text")
               if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(
            f"{type(model).__name__} lacks {' and '.join(missing)}; a CLIP model for the "
            "trainer needs encode_image(images) -> (B, D) and encode_text(tokens) -> (B, D)")
    if not isinstance(getattr(model, "logit_scale", None), torch.Tensor):
        raise TypeError(
            f"{type(model).__name__} lacks a logit_scale tensor (found "
            f"{type(getattr(model, 'logit_scale', None)).__name__}); add "
            "nn.Parameter(torch.tensor(math.log(1 / 0.07))) holding log of the temperature scale")
