"""Two-crop augmentations for MoCo v3 in plain torch, vectorised over a batch.

MoCo v3 (Chen et al. 2021, section 5 / its main_moco.py, following BYOL) draws two differently
augmented crops of every image. Two recipes, chosen by the view type:

- `ColourView` (`MOCO_V3_VIEWS`): MoCo v3's own RGB recipe. Random resized crop (area 0.08-1,
  aspect 3/4-4/3, redrawn until it fits), colour jitter (brightness 0.4, contrast 0.4,
  saturation 0.2, hue 0.1, in a random order per sample; p 0.8), random grayscale (p 0.2),
  Gaussian blur (sigma 0.1-2 px; p 1.0 / 0.1), solarisation (p 0 / 0.2), horizontal flip.
  Each op is a public function here (`adjust_hue`, `to_grayscale`, `gaussian_blur`, ...).
- `CropView` (`MOCO_VIEWS`): the pair adapted to grayscale 28 x 28 Fashion-MNIST: the colour
  jitter keeps its brightness and contrast parts, the blur's sigma range is scaled down to the
  small image, and Gaussian pixel noise is added as a cheap extra perturbation.

Every random draw comes from the `torch.Generator` passed in, in a fixed order and a fixed
number that does not depend on the images or on earlier outcomes, so the same generator state
gives the same crops (checkpoints save the generator; a resumed run redraws exactly). Nothing
loops over samples in Python: the crop is one `grid_sample`, the blur one grouped convolution,
each jitter op runs once per position in the order on the samples that drew it there.

>>> import torch
>>> images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
>>> x1, x2 = two_crops(images, generator=torch.Generator().manual_seed(0))
>>> tuple(x1.shape), x1.dtype, bool((x1 != x2).any())
((4, 1, 28, 28), torch.float32, True)
>>> rgb = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
>>> y1, y2 = two_crops(rgb, generator=torch.Generator().manual_seed(0), views=MOCO_V3_VIEWS,
...                    normalise=False)
>>> tuple(y1.shape), bool(0 <= y1.min() and y2.max() <= 1)
((4, 3, 32, 32), True)
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from reference_trainers.common.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from reference_trainers.common.errors import DataError
from reference_trainers.common.views import MOCO_V3_VIEWS, MOCO_VIEWS, ColourView, CropView

__all__ = ["LUMA_WEIGHTS", "ColourDraws", "ColourView", "CropView", "MOCO_V3_VIEWS",
           "MOCO_VIEWS", "adjust_brightness", "adjust_contrast", "adjust_hue",
           "adjust_saturation", "apply_colour_view", "augment_colour_view", "augment_view",
           "blur_radius", "draw_colour_view", "gaussian_blur", "solarize", "to_grayscale",
           "two_crops"]

_BLUR_RADIUS = 2  # 5-tap kernels: enough for sigma <= 1 px


def two_crops(images: torch.Tensor, *, generator: torch.Generator | None,
              views: tuple[CropView | ColourView, CropView | ColourView] = MOCO_VIEWS,
              normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented crops of uint8 (B, C, H, W) images -> two float32 (B, C, H, W) batches,
    normalised with Fashion-MNIST's mean and std (or in [0, 1] with normalise=False: RGB
    callers normalise with their own statistics, as moco/data.spec_two_crops does).

    Each view runs its own recipe: `augment_view` for a `CropView`, `augment_colour_view` for
    a `ColourView`. Crop 1's draws come first, then crop 2's, all from `generator` (torch's
    default generator when None), on the generator's device.
    """
    pixels = images.float() / 255.0
    if not len(pixels):  # a corpus batch whose images all failed to decode: nothing to draw
        return pixels, pixels.clone()
    out = [augment_colour_view(pixels, view, generator=generator)
           if isinstance(view, ColourView) else augment_view(pixels, view, generator=generator)
           for view in views]
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
    return _sample_box(pixels, width, height, position, flip)


def _sample_box(pixels: torch.Tensor, width: torch.Tensor, height: torch.Tensor,
                position: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Resample each image's box (`width`, `height`: (B,) shares of its sides; `position`:
    (B, 2) in [0, 1], where the box sits in the room left along x and y) to the full (H, W),
    bilinear, mirrored where `flip`."""
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
    return gaussian_blur(x, sigma, radius=_BLUR_RADIUS)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, *, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with a per-sample sigma (B,) in pixels: the
    kernel exp(-d^2 / (2 sigma^2)) over taps d = -radius .. radius, normalised to sum 1, edges
    replicated (as Pillow's blur, which MoCo v3 calls, extends them); one grouped convolution
    per axis over the batch folded into channels."""
    b, c, h, w = x.shape
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    folded = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="replicate")
    folded = F.conv2d(folded, kernel[:, None, None, :], groups=b * c)
    folded = F.conv2d(folded, kernel[:, None, :, None], groups=b * c)
    return folded.reshape(b, c, h, w)


# == MoCo v3's RGB recipe (ColourView) ============================================================
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, Pillow's "L" (torchvision tensors: 0.2989)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # the jitter ops, columns of ColourDraws


@dataclasses.dataclass(frozen=True)
class ColourDraws:
    """Every random choice a `ColourView` makes for a batch of B images.

    box_width, box_height: float (B,), the crop box as shares of the image's width / height.
    position: float (B, 2) in [0, 1], where the box sits in the room left along x and y.
    jitter: bool (B,). factors: float (B, 4), columns BRIGHTNESS, CONTRAST, SATURATION (factors,
    1 = unchanged) and HUE (a shift in turns, 0 = unchanged). order: int64 (B, 4), each row a
    permutation of the four ops, applied left to right. grayscale, blur, solarize, flip: bool
    (B,). sigma: float (B,), the blur's standard deviation in pixels.
    """

    box_width: torch.Tensor
    box_height: torch.Tensor
    position: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    grayscale: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor
    flip: torch.Tensor

    def to(self, device: torch.device) -> "ColourDraws":
        return ColourDraws(**{f.name: getattr(self, f.name).to(device)
                              for f in dataclasses.fields(self)})


def augment_colour_view(pixels: torch.Tensor, view: ColourView, *,
                        generator: torch.Generator | None) -> torch.Tensor:
    """One MoCo v3 view of float (B, C, H, W) pixels in [0, 1] (C = 3, or 1 where the colour
    ops are the identity); returns float (B, C, H, W) in [0, 1]."""
    b, _, h, w = pixels.shape
    return apply_colour_view(pixels, draw_colour_view(view, b, h, w, generator=generator), view)


def draw_colour_view(view: ColourView, batch: int, height: int, width: int, *,
                     generator: torch.Generator | None) -> ColourDraws:
    """The draws of one view for `batch` images of height x width, on the generator's device.

    Always the same number, in this order: crop areas and log-aspects (B x crop_tries each),
    position (B x 2), flip, jitter coin, jitter factors (B x 4), order keys (B x 4), grayscale
    coin, blur coin, sigma, solarize coin. RandomResizedCrop's retry loop becomes: the first of
    the tries whose box fits is kept; if none fits, torchvision's fallback, the largest centred
    box with the aspect clamped into range.
    """
    device = generator.device if generator is not None else torch.device("cpu")

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, *shape, generator=generator, device=device)

    area = uniform(*view.scale, view.crop_tries)                       # shares of H * W
    ratio = uniform(*map(math.log, view.ratio), view.crop_tries).exp()  # box width / height
    aspect = height / width
    box_w, box_h = (area * ratio * aspect).sqrt(), (area / ratio / aspect).sqrt()
    fits = (box_w <= 1.0) & (box_h <= 1.0)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first fitting try
    found = fits.any(dim=1)
    image_ratio, (low, high) = width / height, view.ratio
    fallback = (1.0, image_ratio / low) if image_ratio < low else \
        (high / image_ratio, 1.0) if image_ratio > high else (1.0, 1.0)
    position = uniform(0.0, 1.0, 2)
    flip = uniform(0.0, 1.0) < view.flip_p
    jitter = uniform(0.0, 1.0) < view.jitter_p
    strengths = torch.tensor([view.brightness, view.contrast, view.saturation], device=device)
    lows, highs = (1 - strengths).clamp(min=0), 1 + strengths  # torchvision's factor ranges
    unit = uniform(0.0, 1.0, 4)
    factors = torch.cat([lows + (highs - lows) * unit[:, :3], view.hue * (2 * unit[:, 3:] - 1)],
                        dim=1)
    order = uniform(0.0, 1.0, 4).argsort(dim=1)  # a uniformly random permutation per sample
    grayscale = uniform(0.0, 1.0) < view.grayscale_p
    blur = uniform(0.0, 1.0) < view.blur_p
    sigma = uniform(*view.blur_sigma)
    solarize = uniform(0.0, 1.0) < view.solarize_p
    return ColourDraws(
        box_width=torch.where(found, box_w.gather(1, first)[:, 0], fallback[0]),
        box_height=torch.where(found, box_h.gather(1, first)[:, 0], fallback[1]),
        position=torch.where(found[:, None], position, 0.5), jitter=jitter, factors=factors,
        order=order, grayscale=grayscale, blur=blur, sigma=sigma, solarize=solarize, flip=flip)


def apply_colour_view(pixels: torch.Tensor, draws: ColourDraws,
                      view: ColourView) -> torch.Tensor:
    """MoCo v3's ops in its order on float (B, C, H, W) pixels in [0, 1]: crop (+ flip, which
    commutes with everything after it), jitter, grayscale, blur, solarize."""
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise DataError(f"a ColourView needs (B, 1 or 3, H, W) pixels, got shape "
                        f"{tuple(pixels.shape)}; use a CropView for other images")
    d = draws.to(pixels.device)
    x = _sample_box(pixels, d.box_width.to(pixels.dtype), d.box_height.to(pixels.dtype),
                    d.position.to(pixels.dtype), d.flip)
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for step in range(len(ops)):
        for index, op in enumerate(ops):
            chosen = (d.jitter & (d.order[:, step] == index)).nonzero()[:, 0]
            if len(chosen):
                x.index_copy_(0, chosen, op(x[chosen], d.factors[chosen, index]))
    x = torch.where(d.grayscale[:, None, None, None], to_grayscale(x).expand_as(x), x)
    chosen = d.blur.nonzero()[:, 0]
    if len(chosen):
        x.index_copy_(0, chosen, gaussian_blur(x[chosen], d.sigma[chosen].to(x.dtype),
                                               radius=blur_radius(view.blur_sigma[1])))
    return torch.where(d.solarize[:, None, None, None], solarize(x, view.solarize_threshold), x)


def blur_radius(max_sigma: float) -> int:
    """Taps each side of centre: 4 sigma (scipy's default truncation; 8 for MoCo v3's sigma 2,
    a 17-tap kernel that keeps all but 6e-5 of the Gaussian's mass)."""
    return max(1, math.ceil(4 * max_sigma))


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) -> its luma (B, 1, H, W), LUMA_WEIGHTS; (B, 1, H, W) unchanged."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device)
    return (x * weights[None, :, None, None]).sum(dim=1, keepdim=True)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values[:, None, None, None]


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale towards black: factor (B,) x, clamped to [0, 1] (torchvision's brightness)."""
    return (x * _per_sample(factor)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean luma: factor x + (1 - factor) mean, clamped to [0, 1]."""
    mean = to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_sample(factor)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the pixel's luma: factor 0 is grayscale, 1 the image, 2 twice as saturated;
    clamped to [0, 1]. A one-channel image is returned unchanged."""
    if x.shape[1] == 1:
        return x
    f = _per_sample(factor)
    return (f * x + (1 - f) * to_grayscale(x)).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each pixel's hue in HSV by `shift` (B,) turns (1/3: red -> green -> blue), keeping
    its value (max) and saturation (chroma = max - min). A one-channel image is unchanged.

    Hue in sextants H in [0, 6) from whichever channel is largest; back to RGB with
    channel_n = max - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + H) mod 6, n = 5, 3, 1 for
    red, green, blue (the closed form of the piecewise HSV -> RGB map)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    top, bottom = x.amax(dim=1), x.amin(dim=1)
    chroma = top - bottom
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    sextant = torch.where(top == r, ((g - b) / safe) % 6,
                          torch.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4))
    sextant = (sextant + 6 * shift[:, None, None]) % 6

    def channel(n: int) -> torch.Tensor:
        k = (n + sextant) % 6
        return top - chroma * torch.minimum(k, 4 - k).clamp(0, 1)

    return torch.stack([channel(5), channel(3), channel(1)], dim=1)


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixels >= threshold become 1 - pixel (Pillow's ImageOps.solarize, 128 of 255)."""
    return torch.where(x >= threshold, 1.0 - x, x)
