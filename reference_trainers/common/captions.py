"""Captions for Fashion-MNIST images, from many templates around class names and pixel
attributes, with an optional planted share of mismatched captions (numpy only).

Each caption names the class and some of three attributes computed from the pixels:
brightness (mean intensity of the non-zero pixels), size (share of non-zero pixels) and shape
(bounding-box width / height), each cut into three levels at the terciles of the Fashion-MNIST
training split. Every random choice for sample i is a hash of (seed, key[i], stream), so a
caption depends only on its image, label, key and seed, never on which other samples are present
or their order.

`mismatch_share` plants ill-matched pairs (paper, Sec. 3: ill-matched = high-loss samples):
the caption names a wrong class drawn uniformly from the other nine, recorded in `mismatched`
and `caption_labels` so an experiment can score SCAN's candidates.

>>> import numpy as np
>>> images = np.zeros((2, 28, 28), np.uint8); images[:, 8:20, 10:18] = 200
>>> captions = make_captions(images, np.array([7, 9]), seed=0)
>>> "sneaker" in captions.texts[0], "ankle boot" in captions.texts[1]
(True, True)
"""

from __future__ import annotations

import dataclasses
import re
import string

import numpy as np

from reference_trainers.common.data import CLASS_NAMES, NUM_CLASSES
from reference_trainers.common.errors import DataError

BRIGHTNESS_WORDS = ("dark", "grey", "light")
SIZE_WORDS = ("small", "medium", "large")
SHAPE_WORDS = ("narrow", "square", "wide")
# Tercile cut points on the 60,000 training images (aspect ones moved off the exact integer
# ratios 5/7 and 14/13 where many images tie).
BRIGHTNESS_CUTOFFS = (127.5, 170.3)   # mean of the non-zero pixels, 0..255
SIZE_CUTOFFS = (0.415, 0.592)         # share of non-zero pixels
SHAPE_CUTOFFS = (0.72, 1.08)          # bounding-box width / height

# Fields: {cls} class name, {b} brightness, {s} size, {w} shape. "a" before a vowel becomes "an".
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {b} {cls}.",
    "{cls}, {b}, on a plain background.",
    "a {s} {b} {cls}.",
    "a {w} {cls} in grayscale.",
    "a black and white photo of a {s} {cls}.",
    "a product photo of a {b} {cls}.",
    "a low resolution image of a {w} {cls}.",
    "this {cls} is {b} and {s}.",
    "a {s}, {w} {cls}.",
    "an image showing a {b} {cls}.",
    "a catalogue picture of a {s} {cls}.",
    "a {cls} that looks {b}.",
    "a close-up of a {w} {cls}.",
    "a {b} {cls} seen from the front.",
    "a picture of a {cls}, {s} and {w}.",
    "{cls}: {b}, {s}, {w}.",
    "a tiny grayscale photo of a {b} {w} {cls}.",
    "a {s} {cls} on a black background.",
    "a thumbnail of a {cls}.",
    "one {b} {cls}, centered.",
    "a fashion item: a {s} {cls}.",
    "a scanned photo of a {w} {b} {cls}.",
    "a {cls} with a {w} outline.",
    "there is a {s} {b} {cls} in the picture.",
)

# A prompt ensemble for zero-shot classification: only "{}" (the class name) is filled.
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {} item of clothing.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a product photo of a {}.",
    "a picture of a {}.",
    "a grayscale image of a {}.",
    "a photo of the {}.",
    "a close-up of a {}.",
    "a fashion item: a {}.",
)

_ARTICLE = re.compile(r"\ba (?=[aeiou])")


@dataclasses.dataclass(frozen=True)
class ImageAttributes:
    """Three-level attribute codes per image, each int64 (N,) in {0, 1, 2}: index into
    BRIGHTNESS_WORDS, SIZE_WORDS, SHAPE_WORDS."""

    brightness: np.ndarray
    size: np.ndarray
    shape: np.ndarray


@dataclasses.dataclass(frozen=True)
class CaptionSet:
    """One caption per image.

    texts: tuple of N str; template_ids: int64 (N,) into CAPTION_TEMPLATES;
    caption_labels: int64 (N,) the class the caption names; mismatched: bool (N,), true where
    caption_labels differs from the image's label (planted); attributes: ImageAttributes.
    """

    texts: tuple[str, ...]
    template_ids: np.ndarray
    caption_labels: np.ndarray
    mismatched: np.ndarray
    attributes: ImageAttributes


def fix_articles(text: str) -> str:
    """"a" before a word starting with a vowel becomes "an" ("a ankle boot" -> "an ankle boot")."""
    return _ARTICLE.sub("an ", text)


def image_attributes(images: np.ndarray) -> ImageAttributes:
    """Brightness, size and shape levels of uint8 (N, H, W) images, vectorised.

    An image without any non-zero pixel counts as dark, small and square.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise DataError(f"images have shape {images.shape}, expected (N, H, W)")
    ink = images > 0
    ink_count = ink.sum(axis=(1, 2))
    size = ink_count / (images.shape[1] * images.shape[2])
    brightness = images.sum(axis=(1, 2), dtype=np.int64) / np.maximum(ink_count, 1)
    rows, cols = ink.any(axis=2), ink.any(axis=1)
    height = rows.shape[1] - rows.argmax(axis=1) - rows[:, ::-1].argmax(axis=1)
    width = cols.shape[1] - cols.argmax(axis=1) - cols[:, ::-1].argmax(axis=1)
    aspect = np.where(ink_count > 0, width / np.maximum(height, 1), 1.0)
    return ImageAttributes(
        brightness=np.digitize(brightness, BRIGHTNESS_CUTOFFS).astype(np.int64),
        size=np.digitize(size, SIZE_CUTOFFS).astype(np.int64),
        shape=np.digitize(aspect, SHAPE_CUTOFFS).astype(np.int64))


def hash_uniform(seed: int, keys: np.ndarray, stream: int) -> np.ndarray:
    """float64 (N,) in [0, 1), a pure function of (seed, key, stream) per element (splitmix64).

    Independent of N and of the order of `keys`, so one sample's draws never depend on others.
    """
    # The seed and stream are mixed in Python ints: numpy scalar products would warn on overflow.
    offset = (seed * 0xD1B54A32D192ED03 + stream * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x = np.asarray(keys, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(offset)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x = (x ^ (x >> np.uint64(shift))) * np.uint64(mult)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _hash_choice(seed: int, keys: np.ndarray, stream: int, options: int) -> np.ndarray:
    """int64 (N,) uniform in [0, options), per element like `hash_uniform`."""
    return np.minimum((hash_uniform(seed, keys, stream) * options).astype(np.int64), options - 1)


def _check_inputs(images, labels, keys, mismatch_share):
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"labels have shape {labels.shape}, expected ({len(images)},) to match "
                        "the images")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"labels span [{labels.min()}, {labels.max()}], expected "
                        f"[0, {NUM_CLASSES - 1}]")
    if not 0.0 <= mismatch_share <= 1.0:
        raise DataError(f"mismatch_share={mismatch_share!r} must be in [0, 1]: the expected "
                        "share of captions that name a wrong class")
    keys = np.arange(len(labels)) if keys is None else np.asarray(keys)
    if keys.shape != labels.shape or (len(keys) and keys.min() < 0):
        raise DataError(f"keys have shape {keys.shape} (min {keys.min() if len(keys) else None})"
                        f", expected non-negative ints of shape {labels.shape}")
    return labels.astype(np.int64), keys.astype(np.int64)


def make_captions(images: np.ndarray, labels: np.ndarray, *, seed: int,
                  mismatch_share: float = 0.0, keys: np.ndarray | None = None) -> CaptionSet:
    """A caption per image from CAPTION_TEMPLATES, deterministic per (seed, key).

    images: uint8 (N, H, W); labels: int (N,) in [0, 10); keys: int (N,) the samples' stable ids
    (default 0..N-1; pass the original dataset ids of a subset so its captions equal the full
    set's). Each sample is mismatched independently with probability `mismatch_share` (so the
    count is binomial); a mismatched caption names a class drawn uniformly from the other nine.
    """
    labels, keys = _check_inputs(images, labels, keys, mismatch_share)
    attributes = image_attributes(images)
    template_ids = _hash_choice(seed, keys, 0, len(CAPTION_TEMPLATES))
    mismatched = hash_uniform(seed, keys, 1) < mismatch_share
    offset = 1 + _hash_choice(seed, keys, 2, NUM_CLASSES - 1)
    caption_labels = np.where(mismatched, (labels + offset) % NUM_CLASSES, labels)
    texts = tuple(
        fix_articles(CAPTION_TEMPLATES[t].format(
            cls=CLASS_NAMES[c], b=BRIGHTNESS_WORDS[b], s=SIZE_WORDS[s], w=SHAPE_WORDS[w]))
        for t, c, b, s, w in zip(template_ids.tolist(), caption_labels.tolist(),
                                 attributes.brightness.tolist(), attributes.size.tolist(),
                                 attributes.shape.tolist()))
    return CaptionSet(texts=texts, template_ids=template_ids, caption_labels=caption_labels,
                      mismatched=mismatched, attributes=attributes)


def _check_zero_shot_template(template: str) -> None:
    fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    if fields != [""]:
        raise DataError(f"zero-shot template {template!r} has fields {fields}, expected exactly "
                        "one empty field {} for the class name, e.g. 'a photo of a {}.'")


def class_prompts(templates: tuple[str, ...] | list[str] = ZERO_SHOT_TEMPLATES,
                  class_names: tuple[str, ...] = CLASS_NAMES) -> list[list[str]]:
    """Per class, the filled prompts: result[c][t] = templates[t] with class_names[c].

    Zero-shot top-1 averages the text embeddings of result[c] into one classifier row per class
    (the CLIP prompt ensemble).
    """
    if isinstance(templates, str) or not templates:
        raise DataError(f"templates={templates!r} must be a non-empty list of strings")
    for template in templates:
        _check_zero_shot_template(template)
    return [[fix_articles(t.format(name)) for t in templates] for name in class_names]


def vocabulary_texts() -> list[str]:
    """Every caption and zero-shot template with each field replaced by every word it can take:
    the text the tokenizer's fixed vocabulary must cover."""
    fills = [*CLASS_NAMES, *BRIGHTNESS_WORDS, *SIZE_WORDS, *SHAPE_WORDS]
    texts = [t.replace("{}", " ") for t in ZERO_SHOT_TEMPLATES]
    for template in CAPTION_TEMPLATES:
        texts.append(re.sub(r"\{\w+\}", " ", template))
    texts += fills + ["an"]
    return texts
