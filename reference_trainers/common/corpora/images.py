"""Images and caption rows as numpy, for both frameworks: the `ImageSpec` every decoded image
becomes, `decode_image` (Pillow), the bad-sample errors, and the CSV reading that `CsvCorpus`
(torch batches) and `arrays.CorpusArrays` (the JAX trainer's numpy batches) share, and the
listing of an ImageNet-style folder tree (`list_image_tree`: folder_corpus.ImageFolderCorpus
and the JAX trainer's --imagenet-val). No torch.

>>> ImageSpec.cpu().channels, ImageSpec.gpu(224).crop_padding
(1, 16)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
import re
from collections.abc import Callable, Sequence

import numpy as np

from reference_trainers.common.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from reference_trainers.common.errors import DataError

Tokenize = Callable[[list[str]], np.ndarray]  # texts -> int64 (n, L)
PILLOW_HINT = "decoding images needs Pillow: pip install pillow (or the project's torch extra)"
# CLIP's RGB statistics (Radford et al. 2021, the released preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class BadSampleError(DataError):
    """One sample cannot be served (its image does not decode, its caption is empty); the
    readers catch it, skip the sample and count it."""


class CorruptImageError(BadSampleError):
    """Pillow could not decode an image's bytes."""


def require_pillow():
    """The PIL.Image module, or a DataError naming `pip install pillow`."""
    try:
        from PIL import Image
    except ImportError as err:
        raise DataError(PILLOW_HINT) from err
    return Image


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What every decoded image becomes: Pillow mode "L" (1 channel) or "RGB" (3), resized so
    the shorter side is `size` and centre-cropped to size x size, normalised per channel with
    `mean` / `std` (on the [0, 1] scale). `crop_padding`: zero pixels around the random crop
    of `augment=True` (torch_data.random_crop_flip, then a horizontal flip)."""

    mode: str = "L"
    size: int = 28
    mean: tuple[float, ...] = (FASHION_MNIST_MEAN,)
    std: tuple[float, ...] = (FASHION_MNIST_STD,)
    crop_padding: int = 2

    def __post_init__(self):
        channels = {"L": 1, "RGB": 3}.get(self.mode)
        if channels is None or len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"ImageSpec(mode={self.mode!r}, mean={self.mean}, std={self.std}): "
                            "mode must be 'L' (1 mean/std) or 'RGB' (3 of each)")
        if self.size < 1 or self.crop_padding < 0:
            raise DataError(f"ImageSpec size={self.size}, crop_padding={self.crop_padding}: "
                            "expected size >= 1 and crop_padding >= 0")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @classmethod
    def cpu(cls) -> "ImageSpec":
        """Grayscale 28 x 28 with Fashion-MNIST's statistics: the cpu-* presets' towers."""
        return cls()

    @classmethod
    def gpu(cls, size: int = 224) -> "ImageSpec":
        """RGB size x size with CLIP's statistics; crop padding size // 14 (16 at 224, the same
        share of the side as 2 of 28)."""
        return cls("RGB", size, CLIP_MEAN, CLIP_STD, size // 14)


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def decode_image(data: bytes, spec: ImageSpec) -> np.ndarray:
    """Encoded image bytes -> uint8 (C, size, size) per `spec`. Raises CorruptImageError."""
    image_module = require_pillow()
    try:
        with image_module.open(io.BytesIO(data)) as image:
            image.load()
            image = image.convert(spec.mode)
    except (OSError, SyntaxError, ValueError, image_module.DecompressionBombError) as err:
        # Pillow names the buffer it read, "<_io.BytesIO object at 0x...>": an address that
        # would make the same sample's reason differ between runs (skipped.jsonl).
        reason = " ".join(_OBJECT_REPR.sub("", str(err)).split())
        raise CorruptImageError(f"cannot decode image ({len(data)} bytes): {reason}") from err
    width, height = image.size
    scale = spec.size / min(width, height)
    if (width, height) != (spec.size, spec.size):
        new = (max(spec.size, round(width * scale)), max(spec.size, round(height * scale)))
        image = image.resize(new, image_module.Resampling.BICUBIC)
        left, top = (new[0] - spec.size) // 2, (new[1] - spec.size) // 2
        image = image.crop((left, top, left + spec.size, top + spec.size))
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy takes it as is
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def list_image_tree(root: pathlib.Path) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """The images of root/<class>/ (any depth below the class folder), in one global sorted
    order of their POSIX paths under root: (relative paths (N,), labels int64 (N,) indexing
    the class names, class names (C,) = the sorted first-level folders). Raises DataError
    when root is not a folder, holds train/ and val/ splits, or has no image."""
    from reference_trainers.common.corpora.shard_sources import IMAGE_EXTENSIONS

    if not root.is_dir():
        raise DataError(f"folder corpus {root} is not a folder; expected DIR/<class>/"
                        "<image> (an ImageNet-style tree)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if {"train", "val"} <= set(classes):
        raise DataError(f"{root} holds train/ and val/ folders: point --data at the "
                        f"training split, folder:{root / 'train'}")
    relative, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p.relative_to(root).as_posix() for p in (root / name).rglob("*")
                       if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
                       and (p.is_file() or p.is_symlink()))
        relative += found
        labels += [label] * len(found)
    if not relative:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}/"
                        "<class>/: expected an ImageNet-style tree DIR/<class>/<image>")
    order = np.argsort(np.array(relative, dtype=str), kind="stable")  # one global order
    return ([relative[i] for i in order], np.asarray(labels, dtype=np.int64)[order],
            tuple(classes))


def unreadable_in_tree(root: pathlib.Path, relative: list[str]) -> dict[int, str]:
    """{id: reason} of a listed tree's files bad before any is read: a broken link, an empty
    file (folder_corpus.ImageFolderCorpus and the JAX MoCo trainer's folder: corpus)."""
    skipped = {}
    for i, name in enumerate(relative):
        path = root / name
        if not os.path.exists(path):
            skipped[i] = f"missing file {name} (a broken link)"
        elif os.path.getsize(path) == 0:
            skipped[i] = f"empty file {name}"
    return skipped


def sniff_delimiter(path: pathlib.Path, head: str) -> str:
    try:
        return csv.Sniffer().sniff(head, delimiters=",\t;|").delimiter
    except csv.Error:
        return "\t" if path.suffix.lower() == ".tsv" else ","


def read_csv_rows(path: str | os.PathLike, *, columns: Sequence[str],
                  delimiter: str | None = None, fix: str) -> list[dict[str, str]]:
    """The rows of a CSV / TSV whose header row names every one of `columns` (the delimiter
    sniffed when not given). A file that cannot be read, or lacks a column, is a DataError
    naming it, its columns and `fix` (what to pass instead). A field may be as long as the
    file: the csv module's default limit (131,072 characters) crashed the load on a long
    caption (issue 15 item 16)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read corpus file {path}: {err}") from err
    delimiter = delimiter or sniff_delimiter(path, text[:65536])
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    missing = set(columns) - set(reader.fieldnames or ())
    if missing:
        raise DataError(f"{path} has columns {reader.fieldnames} (delimiter {delimiter!r}); it "
                        f"lacks {sorted(missing)}: {fix}")
    return list(reader)


def read_pairs(path: str | os.PathLike, *, image_column: str = "image",
               caption_column: str | None = "caption", delimiter: str | None = None
               ) -> tuple[list[str], list[str] | None, dict[int, str]]:
    """(resolved image paths, captions (None when image-only), {row id: reason} of the rows
    bad at load) of a CSV / TSV with a header row; see csv_corpus.CsvCorpus for the rules."""
    path = pathlib.Path(path)
    rows = read_csv_rows(path, columns=[image_column] + ([caption_column] if caption_column
                                                         else []),
                         delimiter=delimiter, fix="pass image_column= / caption_column= with "
                         "the header's names, or delimiter=")
    raws = [(row.get(image_column) or "").strip() for row in rows]
    paths = [str(path.parent / raw) if raw else "" for raw in raws]
    captions = None if caption_column is None else \
        [(row.get(caption_column) or "").strip() for row in rows]
    skipped: dict[int, str] = {}
    for i, (image, raw) in enumerate(zip(paths, raws)):
        if not raw:
            skipped[i] = "empty image path"
        elif captions is not None and not captions[i]:
            skipped[i] = "empty caption"
        elif not os.path.isfile(image):
            skipped[i] = f"missing file {raw}"
    return paths, captions, skipped
