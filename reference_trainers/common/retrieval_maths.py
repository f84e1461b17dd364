"""Evaluation maths on the user's own data, framework-free (numpy) so the PyTorch and JAX
trainers share it: image<->text retrieval recall@K on held-out pairs, zero-shot top-K, the
prompt templates for class names of the user's own, and reading a classnames file.

Retrieval follows the usual protocol (open_clip's `--val-data`): pair i is (image i, caption
i); for image i the ranking is over all N captions by cosine similarity and a hit at K means
caption i is among the top K (image-to-text), and the same per caption over all images
(text-to-image). Ties rank the correct item first only if it is strictly more similar: a
model whose features are all equal scores 1/N-ish, not 1.

>>> feats = np.eye(4, dtype=np.float32)
>>> recall_at_k(feats, feats, ks=(1,))
{'image_to_text_R@1': 1.0, 'text_to_image_R@1': 1.0}
>>> topk_accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]), ks=(1, 2))
{'top1': 0.5, 'top2': 1.0}
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from reference_trainers.common.errors import DataError
from reference_trainers.common.eval_maths import normalise_rows

__all__ = ["FOLDER_TEMPLATES", "class_names_for", "folder_prompts", "recall_at_k",
           "topk_accuracy"]

# Prompt templates for zero-shot on a folder of the user's classes: the CLIP recipe of
# averaging several phrasings of "a photo of a {}" (Radford et al. 2021, section 3.1.4), in
# this project's own short list of photo conditions.
FOLDER_TEMPLATES = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a blurry photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a low resolution photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a drawing of a {}.",
    "a black and white photo of the {}.",
    "an image showing a {}.",
)


def _ranks_of_diagonal(similarity: np.ndarray) -> np.ndarray:
    """For each row i of (N, N) `similarity`: how many entries of the row are >= entry (i, i),
    not counting itself (0 = the correct item ranks first; ties count against it)."""
    diagonal = np.diagonal(similarity)[:, None]
    return (similarity >= diagonal).sum(axis=1) - 1


def recall_at_k(image_features: np.ndarray, text_features: np.ndarray,
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image-to-text and text-to-image recall@K of N held-out pairs: features (N, D) each,
    row i of both being pair i. Returns {'image_to_text_R@K': share, 'text_to_image_R@K':
    share} for each K (a K >= N gives 1.0). Raises DataError (a ValueError) on mismatched or
    empty inputs."""
    images = normalise_rows(np.asarray(image_features, np.float32))
    texts = normalise_rows(np.asarray(text_features, np.float32))
    if images.ndim != 2 or images.shape != texts.shape or len(images) == 0:
        raise DataError(f"image features {images.shape} and text features {texts.shape}: "
                         "expected two (N, D) arrays with the same N >= 1 (pair i = row i)")
    similarity = images @ texts.T
    ranks = {"image_to_text": _ranks_of_diagonal(similarity),
             "text_to_image": _ranks_of_diagonal(similarity.T)}
    return {f"{side}_R@{k}": float(np.mean(rank < k))
            for side, rank in ranks.items() for k in ks}


def topk_accuracy(logits: np.ndarray, labels: np.ndarray,
                  ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Share of rows of `logits` (N, C) whose label (N,) is among the K largest, per K, as
    {'topK': share} (K is capped at C). Ties count against the label, as in recall_at_k."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if logits.ndim != 2 or labels.shape != (len(logits),) or len(logits) == 0:
        raise DataError(f"logits {logits.shape} and labels {labels.shape}: expected (N, C) "
                         "and (N,) with N >= 1")
    correct = logits[np.arange(len(logits)), labels][:, None]
    rank = (logits >= correct).sum(axis=1) - 1
    return {f"top{k}": float(np.mean(rank < min(k, logits.shape[1]))) for k in ks}


def folder_prompts(class_names: Sequence[str],
                   templates: Sequence[str] = FOLDER_TEMPLATES) -> list[list[str]]:
    """Per class, every template filled with its name: result[c][t]."""
    return [[template.format(name) for template in templates] for name in class_names]


def class_names_for(folders: Sequence[str], classnames_file: str | os.PathLike | None = None
                    ) -> tuple[str, ...]:
    """The class names of an ImageFolder tree whose sorted class folders are `folders`: the
    lines of `classnames_file` (one per class, in the folders' sorted order; blank lines
    ignored) or, without one, the folder names with '_' read as spaces ("golden_retriever" ->
    "golden retriever"). Raises DataError when the file's line count differs."""
    if classnames_file is None:
        return tuple(name.replace("_", " ").strip() for name in folders)
    path = pathlib.Path(classnames_file)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the classnames file {path}: {err}") from err
    names = tuple(line for line in lines if line)
    if len(names) != len(folders):
        raise DataError(f"the classnames file {path} names {len(names)} classes but the "
                         f"folder tree has {len(folders)} ({', '.join(folders[:3])}, ...): "
                         "write one name per class folder, in the folders' sorted order")
    return names
