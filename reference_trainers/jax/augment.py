"""The PyTorch trainers' augmentations in numpy, drawn from a `numpy.random.Generator`.

- `random_crop_flip`: the CLIP trainer's random 28 x 28 crop after 2 pixels of zero padding
  and a horizontal flip with probability 1/2 (common/torch_data.random_crop_flip).
- `two_crops`: MoCo v3's asymmetric pair (common/augment.two_crops): random resized crop
  (bilinear, border padding, the box clamped to the image), flip, brightness and contrast
  jitter, Gaussian blur, solarisation and pixel noise, with the same `CropView` parameters.

The operations and the order of the draws follow the torch code; the draws themselves come
from numpy's PCG64, not torch's generator, so a JAX run and a torch run with the same seed see
different crops (each deterministic from its seed; checkpoints save the generator state, so a
resumed run redraws exactly). Images are uint8 NCHW as the data holds them; results are
float32 NHWC, flax's layout, normalised with Fashion-MNIST's mean and std.

Several processes: `share=(rank, world)` says the images are process `rank`'s part of a global
batch of `world` parts interleaved as DistributedSampler interleaves them (the global batch's
sample k is part k % world's row k // world). Every process then draws for the whole global
batch from the same generator and keeps its own rows' draws, so each sample gets the draws a
single process with the global batch would give it, and the generators stay in step. (The
last batch of an epoch whose kept count does not divide over the processes holds padding, so
there the draws, and the stream after them, differ from one process's by a few samples.)

>>> import numpy as np
>>> images = np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
>>> x1, x2 = two_crops(images, np.random.default_rng(0))
>>> x1.shape, x1.dtype, bool((x1 != x2).any())
((4, 28, 28, 1), dtype('float32'), True)
"""

from __future__ import annotations

import math

import numpy as np

from reference_trainers.common.views import MOCO_VIEWS, CropView
from reference_trainers.common.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ["CROP_PADDING", "augment_view", "normalise", "random_crop_flip", "two_crops"]

CROP_PADDING = 2  # as common/torch_data.CROP_PADDING
_BLUR_RADIUS = 2  # 5-tap kernels, as common/augment


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (B, C, H, W) pixels -> float32 (B, H, W, C) with Fashion-MNIST's mean 0 / std 1."""
    x = images.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD)
                                .astype(np.float32).transpose(0, 2, 3, 1))


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, *,
                     padding: int = CROP_PADDING, share: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Random crop of uint8 (B, C, H, W) after `padding` zero pixels on every side, then a
    horizontal flip with probability 1/2; one gather. Draws (world * B, 2) offsets, then
    world * B flips, and keeps rows rank::world (`share`, module docstring).
    Returns uint8 (B, C, H, W)."""
    b, c, height, width = images.shape
    rank, world = share
    offsets = rng.integers(0, 2 * padding + 1, size=(world * b, 2))[rank::world]
    flip = (rng.random(world * b) < 0.5)[rank::world]
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    col_steps = np.arange(width)
    cols = np.where(flip[:, None], width - 1 - col_steps, col_steps) + offsets[:, 1:2]
    rows = np.arange(height) + offsets[:, 0:1]
    return padded[np.arange(b)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def two_crops(images: np.ndarray, rng: np.random.Generator, *,
              views: tuple[CropView, CropView] = MOCO_VIEWS,
              share: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray]:
    """Two augmented crops of uint8 (B, C, H, W) -> two float32 (B, H, W, C) batches,
    normalised. Crop 1's draws first, then crop 2's; `share` as in the module docstring."""
    pixels = images.astype(np.float32) / np.float32(255.0)
    out = [(augment_view(pixels, view, rng, share=share) - FASHION_MNIST_MEAN)
           / FASHION_MNIST_STD for view in views]
    return tuple(np.ascontiguousarray(x.astype(np.float32).transpose(0, 2, 3, 1))
                 for x in out)  # type: ignore[return-value]


def augment_view(pixels: np.ndarray, view: CropView, rng: np.random.Generator, *,
                 share: tuple[int, int] = (0, 1)) -> np.ndarray:
    """One augmented view of float32 (B, C, H, W) pixels in [0, 1]; same shape. The draws in
    common/augment.augment_view's order: area, log-ratio, position (B, 2), flip, jitter coin,
    brightness, contrast, blur coin, sigma, solarise coin, noise coin, noise (B, C, H, W),
    each for world * B samples, of which rows rank::world are kept (`share`)."""
    b = pixels.shape[0]
    rank, world = share

    def uniform(low: float, high: float, *shape: int) -> np.ndarray:
        draws = rng.random((world * b, *shape))[rank::world]
        return (low + (high - low) * draws).astype(np.float32)

    def coin(p: float) -> np.ndarray:
        return uniform(0.0, 1.0) < p

    area = uniform(*view.scale)
    ratio = np.exp(uniform(*map(math.log, view.ratio)))
    x = _resized_crop(pixels, area, ratio, uniform(0.0, 1.0, 2), coin(view.flip_p))
    jitter = coin(view.jitter_p)[:, None, None, None]
    brightness = uniform(1 - view.brightness, 1 + view.brightness)[:, None, None, None]
    contrast = uniform(1 - view.contrast, 1 + view.contrast)[:, None, None, None]
    jittered = np.clip(x * brightness, 0, 1)
    mean = jittered.mean(axis=(1, 2, 3), keepdims=True)
    jittered = np.clip((jittered - mean) * contrast + mean, 0, 1)
    x = np.where(jitter, jittered, x)
    blur = coin(view.blur_p)[:, None, None, None]
    x = np.where(blur, _gaussian_blur(x, uniform(*view.blur_sigma)), x)
    solarize = coin(view.solarize_p)[:, None, None, None]
    x = np.where(solarize & (x >= 0.5), 1.0 - x, x)
    noisy = coin(view.noise_p)[:, None, None, None]
    noise = rng.standard_normal((world * b, *x.shape[1:]), dtype=np.float32)[rank::world]
    return np.where(noisy, np.clip(x + view.noise_std * noise, 0, 1), x).astype(np.float32)


def _sample_coords(centre: np.ndarray, half: np.ndarray, flip: np.ndarray | None,
                   size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear source indices and weights along one axis, (B, size) each: grid_sample's
    align_corners=False mapping of output pixel centres through x -> half * x + centre, with
    border padding (coordinates clamped to the image)."""
    out = (2 * np.arange(size, dtype=np.float32) + 1) / size - 1
    scale = np.where(flip, -half, half) if flip is not None else half
    source = scale[:, None] * out[None, :] + centre[:, None]
    pixel = np.clip(((source + 1) * size - 1) / 2, 0, size - 1)
    low = np.floor(pixel).astype(np.int64)
    return low, np.minimum(low + 1, size - 1), (pixel - low).astype(np.float32)


def _resized_crop(pixels: np.ndarray, area: np.ndarray, ratio: np.ndarray,
                  position: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """common/augment._resized_crop: a box of `area` share and aspect `ratio` at `position`,
    flipped where `flip`, resized back by bilinear sampling (separable: no rotation)."""
    b, c, h, w = pixels.shape
    width = np.minimum(np.sqrt(area * ratio), 1.0)
    height = np.minimum(np.sqrt(area / ratio), 1.0)
    centre_x = (2 * position[:, 0] - 1) * (1 - width)
    centre_y = (2 * position[:, 1] - 1) * (1 - height)
    x0, x1, wx = _sample_coords(centre_x, width, flip, w)
    y0, y1, wy = _sample_coords(centre_y, height, None, h)
    batch = np.arange(b)[:, None, None, None]
    chan = np.arange(c)[None, :, None, None]
    rows = pixels[batch, chan, np.arange(h)[None, None, :, None], x0[:, None, None, :]] * \
        (1 - wx[:, None, None, :]) + \
        pixels[batch, chan, np.arange(h)[None, None, :, None], x1[:, None, None, :]] * \
        wx[:, None, None, :]
    return rows[batch, chan, y0[:, None, :, None], np.arange(w)[None, None, None, :]] * \
        (1 - wy[:, None, :, None]) + \
        rows[batch, chan, y1[:, None, :, None], np.arange(w)[None, None, None, :]] * \
        wy[:, None, :, None]


def _gaussian_blur(x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur of (B, C, H, W) with a per-sample sigma (B,), replicate
    padding, 5 taps: along the width, then the height (common/augment._gaussian_blur)."""
    taps = np.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(axis=1, keepdims=True))[:, None, None, :]   # (B, 1, 1, K)
    r, (h, w) = _BLUR_RADIUS, x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="edge")
    across = sum(kernel[..., t, None] * padded[:, :, :, t:t + w] for t in range(2 * r + 1))
    return sum(kernel[..., t, None] * across[:, :, t:t + h, :] for t in range(2 * r + 1))
