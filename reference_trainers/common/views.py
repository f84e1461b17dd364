"""The parameters of MoCo v3's two augmented crops (framework-free, shared by the PyTorch
augmentations in common/augment.py and the numpy ones in reference_trainers/jax/augment.py).

MoCo v3 (Chen et al. 2021, following BYOL) draws two differently augmented crops of every
image; `MOCO_VIEWS` is its asymmetric pair adapted to 28 x 28 grayscale (see common/augment.py).
"""

from __future__ import annotations

import dataclasses

__all__ = ["CropView", "MOCO_VIEWS"]


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
