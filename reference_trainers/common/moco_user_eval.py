"""The MoCo trainer's kNN and linear probe on the user's labelled images (`--eval-folder DIR`,
`--eval-train-folder DIR`), in place of Fashion-MNIST.

* `--eval-folder DIR`: an ImageFolder tree DIR/<class>/<image> (ImageNet's val split as it is
  usually laid out, or any tree of your classes). Scored images: the tree's. The kNN bank and
  the probe's training images: `--eval-train-folder DIR` (a tree with the same class folders,
  e.g. ImageNet's train split or a subset of it), or, without it, a seeded half of each class
  of `--eval-folder` (the other half is scored; a class needs at least 2 images).
* Images are decoded once, at start, with the run's ImageSpec (28 x 28 grey for the CPU
  backbones, the ViT presets' RGB size), and held in memory as uint8: 784 bytes each at 28 x
  28, 150 kB at 224 x 224 RGB (10k images: 1.5 GB), so keep an evaluation set to what fits.
  Bad files are left out (counted in the message of an empty set).

Metrics: `knn_top1` (cosine kNN, k = --knn-k) and `linear_probe_top1`, over the tree's classes.
A run with `--eval-folder` never needs Fashion-MNIST files.

Framework-free: `labelled_splits` reads, decodes and splits the trees into numpy
(`LabelledArrays`), which the JAX MoCo trainer (jax/moco_data.py) scores as they are;
`eval_folder_splits` gives the PyTorch trainer the same split as torch tensors. torch is
imported only there and in `spec_normalise`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

from reference_trainers.common.corpora.images import ImageSpec, decode_image, list_image_tree
from reference_trainers.common.errors import DataError

__all__ = ["LabelledArrays", "LabelledImages", "eval_folder_splits", "labelled_splits",
           "spec_normalise"]


@dataclasses.dataclass
class LabelledArrays:
    """uint8 images (N, C, S, S) with int64 labels (N,) and the class names they index: numpy
    (`labelled_splits`), or torch tensors (`eval_folder_splits`, as LabelledImages)."""

    images: Any
    labels: Any
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


LabelledImages = LabelledArrays  # the PyTorch trainer's name (torch tensors inside)


def load_labelled(folder: str, spec: ImageSpec
                  ) -> tuple[list[np.ndarray], np.ndarray, tuple[str, ...]]:
    """(decoded images, labels, class names) of an ImageFolder tree; bad files (missing,
    empty, not decodable) left out."""
    root = pathlib.Path(folder)
    relative, labels_of, class_names = list_image_tree(root)
    images, labels, skipped = [], [], {}
    for i, name in enumerate(relative):
        path = root / name
        try:
            if os.path.getsize(path) == 0:
                skipped[i] = f"empty file {name}"
                continue
            images.append(decode_image(path.read_bytes(), spec))
        except OSError as err:
            skipped[i] = f"cannot read {path}: {err}"
            continue
        except DataError as err:
            skipped[i] = f"decode: {err}"
            continue
        labels.append(int(labels_of[i]))
    if not images:
        raise DataError(f"evaluation folder {folder}: no image could be decoded "
                        f"({len(skipped)} skipped, e.g. "
                        f"{next(iter(skipped.values()), 'none')}); expected "
                        "DIR/<class>/<image> files Pillow reads")
    return images, np.asarray(labels, dtype=np.int64), tuple(class_names)


def _held(images: list[np.ndarray], labels: np.ndarray, names: tuple[str, ...]
          ) -> LabelledArrays:
    return LabelledArrays(np.stack(images), labels.astype(np.int64), names)


def labelled_splits(folder: str, train_folder: str | None, *, spec: ImageSpec, seed: int
                    ) -> tuple[LabelledArrays, LabelledArrays]:
    """(the kNN bank / probe's training images, the scored images) as numpy; see the module
    docstring."""
    images, labels, names = load_labelled(folder, spec)
    if train_folder:
        train_images, train_labels, train_names = load_labelled(train_folder, spec)
        if train_names != names:
            raise DataError(f"--eval-train-folder {train_folder} has classes {train_names[:5]}"
                            f"... ({len(train_names)}), --eval-folder {folder} has "
                            f"{names[:5]}... ({len(names)}): they must be the same class "
                            "folders")
        return _held(train_images, train_labels, names), _held(images, labels, names)
    rng = np.random.Generator(np.random.PCG64([seed, 17]))
    to_train = np.zeros(len(labels), dtype=bool)
    for c in range(len(names)):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            raise DataError(f"--eval-folder {folder}: class {names[c]!r} has {len(members)} "
                            "decodable image(s); a class needs 2 or more when the folder is "
                            "split into the kNN bank and the scored half (or pass "
                            "--eval-train-folder DIR)")
        to_train[rng.permutation(members)[: (len(members) + 1) // 2]] = True
    pick = lambda mask: [images[i] for i in np.flatnonzero(mask)]  # noqa: E731
    return (_held(pick(to_train), labels[to_train], names),
            _held(pick(~to_train), labels[~to_train], names))


def eval_folder_splits(folder: str, train_folder: str | None, *, spec: Any, seed: int
                       ) -> tuple[LabelledArrays, LabelledArrays]:
    """`labelled_splits` with torch tensors inside (the PyTorch trainer's evaluation)."""
    import torch

    return tuple(LabelledArrays(torch.from_numpy(s.images), torch.from_numpy(s.labels),
                                s.class_names)
                 for s in labelled_splits(folder, train_folder, spec=spec, seed=seed))


def spec_normalise(spec: Any):
    """uint8 (B, C, S, S) decoded with `spec` -> float32 normalised with its statistics."""
    import torch

    shape = (1, spec.channels, 1, 1)

    def normalise(images):
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=images.device).view(shape)
        std = torch.tensor(spec.std, dtype=torch.float32, device=images.device).view(shape)
        return (images.float() / 255.0 - mean) / std

    return normalise
