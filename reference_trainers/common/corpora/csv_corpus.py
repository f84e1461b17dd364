"""A CSV / TSV of (image path, caption) rows as a map-style corpus, and the image decoding both
corpus readers share.

Sample ids are row numbers: the first data row (after the header) is id 0, and a row keeps its
id whatever happens to the rows around it. A bad row keeps its id too, and is never served:

* found at load (`CsvCorpus(...)` scans every row once): an empty image path, an empty or
  missing caption, a file that does not exist. Recorded in `corpus.skipped` {id: reason}.
* found at decode (`batch`): an image Pillow cannot decode. The id is added to `corpus.skipped`
  then, and this and every later epoch leaves it out the same way.

`batch(ids)` returns only the samples it could serve, with their ids, so a trainer that hands
the returned ids to `record()` records exactly what it trained on. In data-parallel training
every rank must hold the same batch size (the features are all-gathered), so
`batch(ids, fill_bad=True)` puts a repeat of a good id *of the same batch* in each bad slot
instead (a kept id, so the pruner accepts it) and counts it in `corpus.repeats`.

>>> import functools, pathlib, tempfile
>>> from reference_trainers.common.tokenizer import Tokenizer
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "pairs.csv").write_text("image,caption\\nnone.png,a bag.\\n")
>>> corpus = CsvCorpus(folder / "pairs.csv", spec=ImageSpec.cpu(),
...                    tokenizer=functools.partial(Tokenizer().encode, context_length=8))
>>> len(corpus), corpus.skipped
(1, {0: 'missing file none.png'})
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from reference_trainers.common.corpora.images import (CLIP_MEAN, CLIP_STD,  # noqa: F401
                                                     PILLOW_HINT, BadSampleError,
                                                     CorruptImageError, Tokenize, decode_image,
                                                     read_pairs, require_pillow)
from reference_trainers.common.corpora.images import ImageSpec as BaseImageSpec
from reference_trainers.common.corpora.images import sniff_delimiter as _sniff_delimiter  # noqa
from reference_trainers.common.data_layer import NothingPlanted
from reference_trainers.common.errors import DataError
from reference_trainers.common.torch_data import random_crop_flip


class ImageSpec(BaseImageSpec):
    """images.ImageSpec with `prepare`: decoded uint8 torch batches to the model's input."""

    def prepare(self, images: torch.Tensor, *, augment: bool,
                generator: torch.Generator | None) -> torch.Tensor:
        """uint8 (B, C, size, size) -> float32 normalised, augmented when asked."""
        if augment and len(images):
            images = random_crop_flip(images, generator=generator, padding=self.crop_padding)
        shape = (1, self.channels, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(shape)
        return (images.float() / 255.0 - mean) / std


class PathCorpus(NothingPlanted):
    """Images on disk, one id per path, decoded on demand; the shared part of `CsvCorpus` and
    `folder_corpus.ImageFolderCorpus`. Subclasses fill `paths` (N,) resolved image paths,
    `captions` (N,) str or None (an image-only corpus), `skipped` {id: reason} and `source`
    (what to name in messages), then serve with `batch` / `raw_batch`.

    Attributes: repeats: slots `batch(..., fill_bad=True)` filled with a repeated id so far.
    """

    spec: ImageSpec
    tokenizer: Tokenize | None
    paths: list[str]
    captions: list[str] | None
    skipped: dict[int, str]
    source: str

    class_names: list[str] | None = None  # a folder tree's classes (labels by id)

    def __len__(self) -> int:
        return len(self.paths)

    # -- TrainData (common/data_layer.py) --------------------------------------------------
    batch_mode = "corpus"

    @property
    def num_samples(self) -> int:
        return len(self)

    def epoch_stats(self, plan: Any) -> dict[str, int]:
        """Bad samples skipped so far (CLIP's row; MoCo's CorpusCrops adds the repeats)."""
        return {"skipped_samples": len(self.skipped)}

    def skipped_samples(self) -> dict[int, tuple[str, str]]:
        return {int(i): (str(self.paths[i]), str(r)) for i, r in self.skipped.items()}

    def disk_corpus(self) -> "PathCorpus":
        return self

    @property
    def listing(self) -> list[str]:
        """The names fingerprinted in corpus.json (a folder tree: paths under its root)."""
        return self.paths

    @property
    def good_ids(self) -> np.ndarray:
        """int64 ids not (yet) known to be bad."""
        bad = np.fromiter(self.skipped, dtype=np.int64, count=len(self.skipped))
        return np.setdiff1d(np.arange(len(self), dtype=np.int64), bad)

    def load_image(self, i: int) -> np.ndarray:
        """uint8 (C, size, size) of sample i. Raises CorruptImageError or DataError."""
        try:
            data = pathlib.Path(self.paths[i]).read_bytes()
        except OSError as err:
            raise DataError(f"cannot read {self.paths[i]}: {err}") from err
        return decode_image(data, self.spec)

    def _load(self, ids, fill_bad: bool) -> tuple[list[np.ndarray], list[int]]:
        ids = self._check_ids(ids)
        images, served = [], []
        for i in ids.tolist():
            if i in self.skipped:
                continue
            try:
                images.append(self.load_image(i))
            except DataError as err:  # a file that vanished or cannot be decoded, found now
                self.skipped[i] = f"decode: {err}"
                continue
            served.append(i)
        if fill_bad and served and len(served) < len(ids):
            extra = len(ids) - len(served)
            images += [images[j % len(served)] for j in range(extra)]
            served += [served[j % len(served)] for j in range(extra)]
            self.repeats += extra
        return images, served

    def raw_batch(self, ids: np.ndarray | torch.Tensor | Sequence[int], *,
                  fill_bad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(images uint8 (B', C, size, size), ids int64 (B')) decoded but not normalised nor
        augmented (a trainer with its own augmentation, MoCo's two crops); bad ids as `batch`."""
        images, served = self._load(ids, fill_bad)
        spec = self.spec
        pixels = (torch.from_numpy(np.stack(images)) if images
                  else torch.zeros((0, spec.channels, spec.size, spec.size), dtype=torch.uint8))
        return pixels, torch.tensor(served, dtype=torch.long)

    def batch(self, ids: np.ndarray | torch.Tensor | Sequence[int], *, augment: bool,
              generator: torch.Generator | None = None, fill_bad: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images float32 (B', C, size, size) normalised, tokens int64 (B', L), ids int64 (B')).

        Bad ids are left out (B' <= B), or with fill_bad=True replaced by repeats of the
        batch's good ids (B' == B unless every id of the batch is bad, then B' == 0).
        An image-only corpus (captions None) returns tokens of shape (B', 0).
        """
        images, served = self._load(ids, fill_bad)
        return self._assemble(images, served, augment=augment, generator=generator)

    def _assemble(self, images, served, *, augment, generator):
        spec = self.spec
        pixels = (torch.from_numpy(np.stack(images)) if images
                  else torch.zeros((0, spec.channels, spec.size, spec.size), dtype=torch.uint8))
        if self.captions is None or self.tokenizer is None:
            tokens = torch.zeros((len(served), 0), dtype=torch.long)
        else:
            texts = [self.captions[i] for i in served]
            tokens = torch.from_numpy(np.asarray(self.tokenizer(texts), dtype=np.int64)) \
                if texts else torch.zeros((0, self._context_length()), dtype=torch.long)
        return (spec.prepare(pixels, augment=augment, generator=generator), tokens,
                torch.tensor(served, dtype=torch.long))

    def _context_length(self) -> int:
        return int(np.asarray(self.tokenizer(["x"])).shape[1])

    def _check_ids(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(np.asarray(ids))
        if ids.ndim != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise DataError(f"ids must be a 1-D integer array, got {ids.dtype} of shape "
                            f"{tuple(ids.shape)}")
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(self)):
            raise DataError(f"ids span [{int(ids.min())}, {int(ids.max())}], expected "
                            f"[0, {len(self) - 1}] for {self.source} with {len(self)} rows")
        return ids.long()


class CsvCorpus(PathCorpus):
    """Rows of (image path, caption) read from `path`; images decoded on demand.

    Args:
      path: the CSV / TSV file; a header row names the columns. Relative image paths are
        relative to the file's folder.
      spec: the ImageSpec images become. tokenizer: texts -> int64 (n, L), e.g.
        functools.partial(Tokenizer().encode, context_length=24); None for an image-only use.
      image_column / caption_column: header names (default "image" and "caption").
        caption_column=None: an image-only corpus (MoCo): no caption column is needed, any is
        ignored, and an empty caption is not a bad row.
      delimiter: None sniffs it from the first 64 KiB (",", tab, ";" or "|"; a .tsv file
        defaults to tab when sniffing fails).

    Attributes: paths (N,) resolved image paths; captions (N,) str, or None when image-only;
      skipped {id: reason}; repeats: slots `batch(..., fill_bad=True)` filled so far.
    """

    def __init__(self, path: str | os.PathLike, *, spec: ImageSpec, tokenizer: Tokenize | None,
                 image_column: str = "image", caption_column: str | None = "caption",
                 delimiter: str | None = None):
        self.path, self.spec, self.tokenizer = pathlib.Path(path), spec, tokenizer
        self.source = str(self.path)
        self.paths, self.captions, self.skipped = read_pairs(
            self.path, image_column=image_column, caption_column=caption_column,
            delimiter=delimiter)
        self.repeats = 0
