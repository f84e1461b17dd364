"""The evaluation maths that needs no framework, written once for every trainer: zero-shot
top-1 with the CLIP prompt ensemble (Radford et al. 2021, section 3.1.4) and MoCo's cosine
kNN, on numpy features (a CPU torch tensor passes as well: numpy reads it without a copy).

What calls a model (feature extraction) and what trains (the linear probe's L-BFGS) stays with
each framework: common/evaluation.py (PyTorch) and jax/evaluation.py (JAX).

>>> prototypes = np.eye(3, 8, dtype=np.float32)
>>> zero_shot_top1(prototypes, np.arange(3), prototypes)
1.0
>>> knn_top1(prototypes, np.arange(3), prototypes, np.arange(3), k=1)
1.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["KNN_TEMPERATURE", "knn_top1", "normalise_rows", "zero_shot_classifier",
           "zero_shot_top1"]

KNN_TEMPERATURE = 0.07
"""kNN votes weigh each neighbour by exp(cosine similarity / KNN_TEMPERATURE) (InstDisc's)."""


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows of `x` (..., D) scaled to unit L2 norm (norms below 1e-12 taken as 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def zero_shot_classifier(encode_text: Callable[[np.ndarray], Any],
                         class_prompts: Sequence[Sequence[str]],
                         tokenize: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Per class: encode every prompt, L2-normalise, average, renormalise (Radford et al.
    2021, section 3.1.4). Returns (C, D) float32 with unit-norm rows."""
    rows = []
    for prompts in class_prompts:
        features = normalise_rows(np.asarray(encode_text(tokenize(list(prompts))), np.float32))
        rows.append(normalise_rows(features.mean(axis=0)))
    return np.stack(rows).astype(np.float32)


def zero_shot_top1(image_features: np.ndarray, labels: np.ndarray,
                   classifier: np.ndarray) -> float:
    """Share of images (N, D) whose most similar class row of `classifier` (C, D) is their
    label (N,)."""
    logits = np.asarray(image_features, np.float32) @ np.asarray(classifier, np.float32).T
    return float(np.mean(logits.argmax(axis=1) == np.asarray(labels)))


def knn_top1(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
             test_labels: np.ndarray, *, k: int, num_classes: int = 10,
             chunk: int = 1024) -> float:
    """Cosine k-nearest-neighbour top-1 with similarity-weighted votes exp(sim / 0.07), MoCo's
    monitor of its frozen features. Features (N, D) / (M, D) float, labels integer in
    [0, num_classes); `chunk` test rows at a time bound the (chunk, N) similarity block."""
    train_n = normalise_rows(np.asarray(train_features, np.float32))
    test_n = normalise_rows(np.asarray(test_features, np.float32))
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    k = min(k, len(train_n))
    correct = 0
    for start in range(0, len(test_n), chunk):
        sims = test_n[start:start + chunk] @ train_n.T
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, idx, axis=1)
        votes = np.zeros((len(sims), num_classes))
        np.add.at(votes, (np.arange(len(sims))[:, None], train_labels[idx]),
                  np.exp(top / KNN_TEMPERATURE))
        correct += int((votes.argmax(axis=1) == test_labels[start:start + chunk]).sum())
    return correct / max(len(test_n), 1)
