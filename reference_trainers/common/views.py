"""The parameters of MoCo v3's two augmented crops (framework-free, shared by the PyTorch
augmentations in common/augment.py and the numpy ones in reference_trainers/jax/augment.py).

MoCo v3 (Chen et al. 2021, following BYOL) draws two differently augmented crops of every
image. `MOCO_VIEWS` (`CropView`) is its asymmetric pair adapted to 28 x 28 grayscale;
`MOCO_V3_VIEWS` (`ColourView`) is its own RGB recipe, for RGB corpora (PyTorch only).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reference_trainers.common.errors import DataError

__all__ = ["ColourView", "CropView", "MOCO_V3_VIEWS", "MOCO_VIEWS", "moco_view_pair"]


@dataclasses.dataclass(frozen=True)
class CropView:
    """The augmentation of one of the two crops (probabilities are per sample).

    scale: area share range of the random resized crop (MoCo v3's --crop-min 0.2 .. 1).
    ratio: aspect ratio range (torchvision's 3/4 .. 4/3). flip_p: horizontal flip.
    jitter_p: brightness and contrast jitter, each factor uniform in 1 +- its strength.
    blur_p, blur_sigma: Gaussian blur with sigma uniform in the range (pixels, 28 x 28 scale).
    solarize_p: pixels >= 0.5 become 1 - pixel. noise_p, noise_std: additive N(0, std^2) noise.
    """

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    solarize_p: float = 0.0
    noise_p: float = 0.5
    noise_std: float = 0.05


# MoCo v3's asymmetric pair: blur 1.0 / 0.1, solarise 0 / 0.2 (its augmentation1 / augmentation2).
MOCO_VIEWS = (CropView(), CropView(blur_p=0.1, solarize_p=0.2))


@dataclasses.dataclass(frozen=True)
class ColourView:
    """One of MoCo v3's two crops of an RGB image (its `augmentation1` / `augmentation2`,
    BYOL's recipe); probabilities are per sample, applied in this order:

    scale, ratio: random resized crop, area share and aspect ranges (MoCo v3's --crop-min
        default 0.08 .. 1; torchvision's 3/4 .. 4/3), redrawn up to `crop_tries` times until
        the box fits as torchvision does, else its centre-crop fallback.
    jitter_p: colour jitter (torchvision's ColorJitter(brightness, contrast, saturation, hue)):
        factors uniform in [max(0, 1 - s), 1 + s] for the first three, a hue shift uniform in
        [-hue, hue] turns of the colour wheel; the four run in a random order per sample.
    grayscale_p: replace the pixels by their luma (ITU-R 601-2, as Pillow), on every channel.
    blur_p, blur_sigma: Gaussian blur, sigma uniform in the range (pixels; MoCo v3's 0.1 .. 2).
    solarize_p, solarize_threshold: pixels >= threshold become 1 - pixel (Pillow's 128 of 255).
    flip_p: horizontal flip.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_tries: int = 10
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 128 / 255
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)} (a probability in [0, 1])"
                    for name in ("jitter_p", "grayscale_p", "blur_p", "solarize_p", "flip_p")
                    if not 0.0 <= getattr(self, name) <= 1.0]
        low, high = self.scale
        if not 0.0 < low <= high <= 1.0:
            problems.append(f"scale={self.scale} (0 < low <= high <= 1)")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            problems.append(f"ratio={self.ratio} (0 < low <= high)")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            problems.append(f"blur_sigma={self.blur_sigma} (0 < low <= high)")
        if min(self.brightness, self.contrast, self.saturation) < 0:
            problems.append("brightness, contrast and saturation must be >= 0")
        if not 0.0 <= self.hue <= 0.5:
            problems.append(f"hue={self.hue} (in [0, 0.5])")
        if self.crop_tries < 1:
            problems.append(f"crop_tries={self.crop_tries} (>= 1)")
        if problems:
            raise DataError("ColourView: " + "; ".join(problems) + ". Pass values in range "
                            "(MoCo v3's are the defaults).")


# MoCo v3's RGB pair at its defaults (main_moco.py): blur 1.0 / 0.1, solarise 0 / 0.2.
MOCO_V3_VIEWS = (ColourView(), ColourView(blur_p=0.1, solarize_p=0.2))


def moco_view_pair(view: type, crop_min: float) -> tuple[Any, Any]:
    """MoCo v3's asymmetric pair of crop views (their augmentation 1 and 2) with the run's
    smallest crop area: the second view blurs less often and solarizes. `view` is CropView
    (grayscale, numpy or torch) or common/augment.ColourView (MoCo v3's RGB recipe)."""
    return (view(scale=(crop_min, 1.0)),
            view(scale=(crop_min, 1.0), blur_p=0.1, solarize_p=0.2))
