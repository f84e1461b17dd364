"""Image-text pairs in memory as torch tensors, batched by ids, with plain-torch augmentation.

A whole Fashion-MNIST split is 47 MB of uint8 pixels, so it lives in memory and a batch is one
gather by the ids the sampler serves (SCAN's plan): no per-sample Python loop, no worker
processes. The `torch.utils.data.Dataset` face (`__getitem__(i) -> (image, tokens, i)`) is
there for users who want a DataLoader; `batch(ids, augment=False)` equals stacking it.

>>> import numpy as np, torch
>>> from reference_trainers.common.data import ImageSplits
>>> rng = np.random.default_rng(0)
>>> images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
>>> splits = ImageSplits(images, np.arange(20) % 10, images, np.arange(20) % 10)
>>> data = build_image_text_data(splits, seed=0)
>>> x, tokens, ids = data.batch(np.array([3, 1]), augment=True,
...                             generator=torch.Generator().manual_seed(0))
>>> tuple(x.shape), x.dtype, tuple(tokens.shape), ids.tolist()
((2, 1, 28, 28), torch.float32, (2, 24), [3, 1])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# make_captions, plant_near_duplicates and subset_indices stay importable from here (noqa).
from reference_trainers.common.captions import make_captions  # noqa: F401
from reference_trainers.common.data import (FASHION_MNIST_MEAN, FASHION_MNIST_STD,  # noqa: F401
                                            ImageSplits, plant_near_duplicates, subset_indices)
from reference_trainers.common.data_layer import HeldInMemory, Planted
from reference_trainers.common.errors import DataError
from reference_trainers.common.pairs import build_image_text_arrays
from reference_trainers.common.tokenizer import Tokenizer

CROP_PADDING = 2  # pixels of zero padding before the random 28 x 28 crop


class ImageTextData(HeldInMemory, torch.utils.data.Dataset):
    """N image-text pairs held as tensors, with the planted-noise records.

    images: uint8 (N, 1, H, W); tokens: int64 (N, L); labels: int64 (N,) the image's class;
    caption_labels: int64 (N,) the class the caption names; mismatched: bool (N,);
    duplicate_of: int64 (N,) position of the copied image, -1 if none; source_ids: int64 (N,)
    the samples' ids in the original split; texts: the N captions.
    """

    def __init__(self, images: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor, *,
                 caption_labels: torch.Tensor | None = None,
                 mismatched: torch.Tensor | None = None,
                 duplicate_of: torch.Tensor | None = None,
                 source_ids: torch.Tensor | None = None,
                 texts: tuple[str, ...] = ()):
        n = len(images)
        if images.dtype != torch.uint8 or images.ndim != 4 or tokens.ndim != 2 or len(tokens) != n \
                or labels.shape != (n,):
            raise DataError(f"images {images.dtype} {tuple(images.shape)}, tokens "
                            f"{tuple(tokens.shape)}, labels {tuple(labels.shape)}: expected uint8 "
                            "(N, 1, H, W), int64 (N, L) and int64 (N,) with the same N")
        self.images, self.tokens, self.labels = images, tokens.long(), labels.long()
        self.caption_labels = self.labels.clone() if caption_labels is None else caption_labels
        self.mismatched = torch.zeros(n, dtype=torch.bool) if mismatched is None else mismatched
        self.duplicate_of = torch.full((n,), -1, dtype=torch.long) if duplicate_of is None \
            else duplicate_of
        self.source_ids = torch.arange(n) if source_ids is None else source_ids
        self.texts = tuple(texts)

    def __len__(self) -> int:
        return len(self.images)

    # -- TrainData (common/data_layer.py): the rest comes from HeldInMemory ------------------
    def planted(self) -> Planted:
        return Planted(mismatched=self.mismatched.cpu().numpy(),
                       duplicate_of=self.duplicate_of.cpu().numpy())

    @property
    def context_length(self) -> int:
        return self.tokens.shape[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(image float32 (1, H, W) normalised, tokens int64 (L,), index); no augmentation."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return normalise(self.images[index]), self.tokens[index], index

    def batch(self, ids: np.ndarray | torch.Tensor, *, augment: bool,
              generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images float32 (B, 1, H, W) normalised, tokens int64 (B, L), ids int64 (B,)).

        ids: int (B,) in [0, N). augment=True applies a random crop after 2-pixel zero padding
        and a random horizontal flip per sample, drawn from `generator` (torch's default
        generator when None), so the same generator state gives the same batch.
        """
        ids = self._check_ids(ids)
        images = self.images[ids]
        if augment:
            images = random_crop_flip(images, generator=generator)
        return normalise(images), self.tokens[ids], ids

    def _check_ids(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids)
        if ids.ndim != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise DataError(f"ids must be a 1-D integer array, got {ids.dtype} of shape "
                            f"{tuple(ids.shape)}")
        ids = ids.to(device=self.images.device, dtype=torch.long)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(self)):
            raise DataError(f"ids span [{int(ids.min())}, {int(ids.max())}], expected "
                            f"[0, {len(self) - 1}] for a dataset of {len(self)} samples")
        return ids

    def to(self, device: torch.device | str) -> "ImageTextData":
        """A copy with every tensor on `device` (batches are then gathered there)."""
        return ImageTextData(
            self.images.to(device), self.tokens.to(device), self.labels.to(device),
            caption_labels=self.caption_labels.to(device), mismatched=self.mismatched.to(device),
            duplicate_of=self.duplicate_of.to(device), source_ids=self.source_ids.to(device),
            texts=self.texts)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) -> float32 with Fashion-MNIST's mean 0 / std 1."""
    return (images.float() / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD


def resize_to_spec(spec: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fashion-MNIST images (uint8 (B, 1, 28, 28)) as a tower fed by an ImageSpec takes them
    (the GPU presets evaluating on Fashion-MNIST): resized bilinearly to spec.size, rounded to
    uint8 levels, the channel repeated to spec.channels, normalised with the spec's statistics
    (what `ImageSpec.prepare(augment=False)` does to a decoded image). -> float32."""
    shape = (1, spec.channels, 1, 1)

    def to_spec(images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(spec.size, spec.size), mode="bilinear",
                          align_corners=False).clamp(0, 255).round() / 255.0
        x = x.repeat(1, spec.channels, 1, 1)
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(shape)
        return (x - mean) / std

    return to_spec


def random_crop_flip(images: torch.Tensor, *, generator: torch.Generator | None,
                     padding: int = CROP_PADDING) -> torch.Tensor:
    """Random crop of uint8 (B, C, H, W) after `padding` zero pixels on every side, then a
    horizontal flip with probability 1/2; one gather for the whole batch. Returns (B, C, H, W).

    Draws (B, 2) offsets then B flips from `generator`, on the generator's device.
    """
    b, c, height, width = images.shape
    device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator, device=device)
    flip = torch.rand(b, generator=generator, device=device) < 0.5
    offsets, flip = offsets.to(images.device), flip.to(images.device)
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    col_steps = torch.arange(width, device=images.device)
    cols = torch.where(flip[:, None], width - 1 - col_steps, col_steps) + offsets[:, 1:2]
    rows = torch.arange(height, device=images.device) + offsets[:, 0:1]
    batch_ix = torch.arange(b, device=images.device)[:, None, None, None]
    chan_ix = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch_ix, chan_ix, rows[:, None, :, None], cols[:, None, None, :]]


def build_image_text_data(splits: ImageSplits, *, train: bool = True,
                          num_samples: int | None = None, mismatch_share: float = 0.0,
                          duplicate_share: float = 0.0, seed: int = 0,
                          context_length: int = 24,
                          tokenizer: Tokenizer | None = None) -> ImageTextData:
    """One split as ImageTextData: subset -> planted near-duplicates -> captions -> tokens
    (common/pairs.build_image_text_arrays, wrapped in tensors).

    num_samples: a class-balanced subset (all samples when None). Captions are keyed by the
    samples' ids in the original split, so a subset's captions equal the full split's (for
    samples that are not duplicates). Noise is planted in the training split only.
    """
    pairs = build_image_text_arrays(splits, train=train, num_samples=num_samples,
                                    mismatch_share=mismatch_share,
                                    duplicate_share=duplicate_share, seed=seed,
                                    context_length=context_length, tokenizer=tokenizer)
    return ImageTextData(
        torch.from_numpy(pairs.images), torch.from_numpy(pairs.tokens),
        torch.from_numpy(pairs.labels), caption_labels=torch.from_numpy(pairs.caption_labels),
        mismatched=torch.from_numpy(pairs.mismatched),
        duplicate_of=torch.from_numpy(pairs.duplicate_of),
        source_ids=torch.from_numpy(pairs.source_ids), texts=pairs.texts)
