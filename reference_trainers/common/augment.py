"""Two-crop augmentations for MoCo v3 in plain torch, vectorised over a batch.

MoCo v3 (Chen et al. 2021, following BYOL) draws two differently augmented crops of every
image: random resized crop, horizontal flip, colour jitter, Gaussian blur (always on crop 1,
rarely on crop 2) and solarisation (crop 2 only). For grayscale 28 x 28 Fashion-MNIST the
colour jitter keeps its brightness and contrast parts, the blur's sigma range is scaled down to
the small image, and Gaussian pixel noise is added as a cheap extra perturbation.

Every random draw comes from the `torch.Generator` passed in, in a fixed order, so the same
generator state gives the same crops (checkpoints save the generator; a resumed run redraws
exactly). Nothing loops over samples in Python: the crop is one `grid_sample`, the blur one
grouped convolution.

>>> import torch
>>> images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
>>> x1, x2 = two_crops(images, generator=torch.Generator().manual_seed(0))
>>> tuple(x1.shape), x1.dtype, bool((x1 != x2).any())
((4, 1, 28, 28), torch.float32, True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reference_trainers.common.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from reference_trainers.common.views import MOCO_VIEWS, CropView

__all__ = ["CropView", "MOCO_VIEWS", "augment_view", "two_crops"]

_BLUR_RADIUS = 2  # 5-tap kernels: enough for sigma <= 1 px


def two_crops(images: torch.Tensor, *, generator: torch.Generator | None,
              views: tuple[CropView, CropView] = MOCO_VIEWS,
              normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented crops of uint8 (B, C, H, W) images -> two float32 (B, C, H, W) batches,
    normalised with Fashion-MNIST's mean and std (or in [0, 1] with normalise=False).

    Crop 1's draws come first, then crop 2's, all from `generator` (torch's default generator
    when None), on the generator's device.
    """
    pixels = images.float() / 255.0
    out = [augment_view(pixels, view, generator=generator) for view in views]
    if normalise:
        out = [(x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD for x in out]
    return out[0], out[1]


def augment_view(pixels: torch.Tensor, view: CropView, *,
                 generator: torch.Generator | None) -> torch.Tensor:
    """One augmented view of float (B, C, H, W) pixels in [0, 1]; returns the same shape."""
    b = pixels.shape[0]
    device = generator.device if generator is not None else torch.device("cpu")

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        u = torch.rand(b, *shape, generator=generator, device=device).to(pixels.device)
        return low + (high - low) * u

    def coin(p: float) -> torch.Tensor:
        return uniform(0.0, 1.0) < p

    x = _resized_crop(pixels, uniform(*view.scale), uniform(*map(math.log, view.ratio)).exp(),
                      uniform(0.0, 1.0, 2), coin(view.flip_p))
    jitter = coin(view.jitter_p)[:, None, None, None]
    brightness = uniform(1 - view.brightness, 1 + view.brightness)[:, None, None, None]
    contrast = uniform(1 - view.contrast, 1 + view.contrast)[:, None, None, None]
    jittered = (x * brightness).clamp(0, 1)
    mean = jittered.mean(dim=(1, 2, 3), keepdim=True)
    jittered = ((jittered - mean) * contrast + mean).clamp(0, 1)
    x = torch.where(jitter, jittered, x)
    blur = coin(view.blur_p)[:, None, None, None]
    x = torch.where(blur, _gaussian_blur(x, uniform(*view.blur_sigma)), x)
    solarize = coin(view.solarize_p)[:, None, None, None]
    x = torch.where(solarize & (x >= 0.5), 1.0 - x, x)
    noisy = coin(view.noise_p)[:, None, None, None]
    noise = torch.randn(x.shape, generator=generator, device=device).to(x.device)
    return torch.where(noisy, (x + view.noise_std * noise).clamp(0, 1), x)


def _resized_crop(pixels: torch.Tensor, area: torch.Tensor, ratio: torch.Tensor,
                  position: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop a box of `area` share and aspect `ratio` (both (B,)) at `position` ((B, 2) in
    [0, 1]: where the box sits in the room left), flip where `flip`, resize back to (H, W)
    with bilinear sampling. torchvision rejects boxes that do not fit and retries; here a box
    side is clamped to the image instead, so one draw always suffices."""
    width = (area * ratio).sqrt().clamp(max=1.0)    # shares of the image side
    height = (area / ratio).sqrt().clamp(max=1.0)
    centre_x = (2 * position[:, 0] - 1) * (1 - width)  # normalised coords in [-1, 1]
    centre_y = (2 * position[:, 1] - 1) * (1 - height)
    theta = torch.zeros(pixels.shape[0], 2, 3, dtype=pixels.dtype, device=pixels.device)
    theta[:, 0, 0] = torch.where(flip, -width, width)
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with a per-sample sigma (B,): one grouped
    convolution per axis over the batch folded into channels."""
    b, c, h, w = x.shape
    taps = torch.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    folded = F.pad(x.reshape(1, b * c, h, w), (_BLUR_RADIUS,) * 4, mode="replicate")
    folded = F.conv2d(folded, kernel[:, None, None, :], groups=b * c)
    folded = F.conv2d(folded, kernel[:, None, :, None], groups=b * c)
    return folded.reshape(b, c, h, w)
