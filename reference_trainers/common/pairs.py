"""Image-text pairs as numpy arrays, with the planted noise: the framework-free half of
`torch_data.build_image_text_data`, shared by the PyTorch and JAX trainers.

One split goes subset -> planted near-duplicates -> captions (with planted mismatches) ->
tokens. The PyTorch trainer wraps the result in tensors (`torch_data.ImageTextData`); the JAX
trainer keeps the arrays.

>>> import numpy as np
>>> from reference_trainers.common.data import ImageSplits
>>> rng = np.random.default_rng(0)
>>> images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
>>> splits = ImageSplits(images, np.arange(20) % 10, images, np.arange(20) % 10)
>>> pairs = build_image_text_arrays(splits, seed=0)
>>> pairs.images.shape, pairs.images.dtype, pairs.tokens.shape, pairs.tokens.dtype
((20, 1, 28, 28), dtype('uint8'), (20, 24), dtype('int64'))
"""

from __future__ import annotations

import dataclasses

import numpy as np

from reference_trainers.common.captions import make_captions
from reference_trainers.common.data import ImageSplits, split_subset
from reference_trainers.common.data_layer import HeldInMemory, Planted
from reference_trainers.common.errors import DataError
from reference_trainers.common.tokenizer import Tokenizer

__all__ = ["ImageTextArrays", "build_image_text_arrays"]


@dataclasses.dataclass(frozen=True)
class ImageTextArrays(HeldInMemory):
    """N image-text pairs with the planted-noise records, all numpy.

    images: uint8 (N, 1, H, W); tokens: int64 (N, L); labels: int64 (N,) the image's class;
    caption_labels: int64 (N,) the class the caption names; mismatched: bool (N,);
    duplicate_of: int64 (N,) position of the copied image, -1 if none; source_ids: int64 (N,)
    the samples' ids in the original split; texts: the N captions.
    """

    images: np.ndarray
    tokens: np.ndarray
    labels: np.ndarray
    caption_labels: np.ndarray
    mismatched: np.ndarray
    duplicate_of: np.ndarray
    source_ids: np.ndarray
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def planted(self) -> Planted:
        """TrainData (common/data_layer.py); the rest comes from HeldInMemory."""
        return Planted(mismatched=self.mismatched, duplicate_of=self.duplicate_of)


def build_image_text_arrays(splits: ImageSplits, *, train: bool = True,
                            num_samples: int | None = None, mismatch_share: float = 0.0,
                            duplicate_share: float = 0.0, seed: int = 0,
                            context_length: int = 24,
                            tokenizer: Tokenizer | None = None) -> ImageTextArrays:
    """One split as arrays: subset -> planted near-duplicates -> captions -> tokens.

    num_samples: a class-balanced subset (all samples when None). Captions are keyed by the
    samples' ids in the original split, so a subset's captions equal the full split's (for
    samples that are not duplicates). Noise is planted in the training split only.
    """
    if not train and (mismatch_share or duplicate_share):
        raise DataError(f"mismatch_share={mismatch_share}, duplicate_share={duplicate_share} on "
                        "the test split: plant noise in the training split only (train=True), "
                        "evaluation needs clean labels")
    source_ids, images, labels, duplicate_of = split_subset(
        splits, train=train, num_samples=num_samples, duplicate_share=duplicate_share, seed=seed)
    captions = make_captions(images, labels, seed=seed, mismatch_share=mismatch_share,
                             keys=source_ids)
    tokens = (tokenizer or Tokenizer()).encode(list(captions.texts), context_length)
    return ImageTextArrays(
        images=np.ascontiguousarray(images[:, None]), tokens=np.asarray(tokens, dtype=np.int64),
        labels=labels, caption_labels=captions.caption_labels, mismatched=captions.mismatched,
        duplicate_of=duplicate_of, source_ids=source_ids, texts=captions.texts)
