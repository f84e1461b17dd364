"""The evaluations the paper reports: zero-shot top-1 for CLIP, a linear probe for MoCo.

SCAN (arXiv 2411.09126, section 4) reports CLIP models by zero-shot top-1 with the CLIP
prompt ensemble (Radford et al. 2021, section 3.1.4) and MoCo models by the top-1 of a
linear classifier on frozen features. Both are written here once for every trainer:
only `extract_features` and `zero_shot_classifier` call a model; everything else takes
arrays, numpy or torch, so a JAX trainer passes its numpy features and reuses the logic.

Nothing here is tuned on a test split: the linear probe's optimiser, step count and weight
decay are fixed constants (`PROBE_STEPS`, `PROBE_WEIGHT_DECAY`), the same for every run and
every pruning rule, so a difference in accuracy is the features' and not the probe's.

Example:
    >>> import numpy as np
    >>> prototypes = np.eye(3, 8, dtype=np.float32)
    >>> zero_shot_top1(prototypes, np.arange(3), prototypes)
    1.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reference_trainers.common.probe_constants import PROBE_STEPS, PROBE_WEIGHT_DECAY

__all__ = ["PROBE_STEPS", "PROBE_WEIGHT_DECAY", "extract_features", "linear_probe_top1",
           "zero_shot_classifier", "zero_shot_top1"]


def _to_tensor(array: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A torch tensor (CPU for non-torch input) from a tensor or anything numpy reads, with
    no copy where none is needed."""
    if isinstance(array, torch.Tensor):
        return array if dtype is None else array.to(dtype)
    return torch.as_tensor(np.asarray(array), dtype=dtype)


@torch.no_grad()
def zero_shot_classifier(encode_text: Callable[[torch.Tensor], Any],
                         class_prompts: Sequence[Sequence[str]],
                         tokenize: Callable[[list[str]], Any]) -> torch.Tensor:
    """The CLIP prompt-ensemble classifier: per class, encode every prompt, L2-normalise,
    average, renormalise (Radford et al. 2021, section 3.1.4).

    class_prompts: C lists of prompts (e.g. "a photo of a {class}." over templates), class c
        first. tokenize: list[str] of n prompts -> (n, L) int64 array or tensor.
    encode_text: (n, L) int64 tensor -> (n, D) features (torch, or anything numpy reads); it is
        called as given, so put the model in eval mode and on the tokens' device first.
    Returns (C, D) float32 CPU tensor with unit-norm rows.
    """
    weights = []
    for prompts in class_prompts:
        tokens = _to_tensor(tokenize(list(prompts)), torch.int64)
        features = F.normalize(_to_tensor(encode_text(tokens)).float().cpu(), dim=-1)
        weights.append(F.normalize(features.mean(dim=0), dim=-1))
    return torch.stack(weights)


@torch.no_grad()
def zero_shot_top1(image_features: Any, labels: Any, classifier: Any) -> float:
    """Share of images whose most similar class row is their label.

    image_features (N, D) float (normalised or not: the argmax per row ignores its norm);
    labels (N,) integer; classifier (C, D) float from `zero_shot_classifier`. Numpy or torch.
    Returns top-1 accuracy in [0, 1].
    """
    features = _to_tensor(image_features).float().cpu()
    classes = _to_tensor(classifier).float().cpu()
    return _top1(features @ classes.T, labels)


def _top1(logits: torch.Tensor, labels: Any) -> float:
    """(N, C) scores and (N,) integer labels -> share of rows whose argmax is the label."""
    predicted = logits.argmax(dim=1)
    return float((predicted == _to_tensor(labels, torch.int64).cpu()).double().mean())


def _modules_of(encode: Callable) -> list[nn.Module]:
    """The nn.Modules whose train/eval mode `encode` depends on: itself if it is one, else the
    module a bound method belongs to; none for a plain function."""
    owner = encode if isinstance(encode, nn.Module) else getattr(encode, "__self__", None)
    return list(owner.modules()) if isinstance(owner, nn.Module) else []


def extract_features(encode_image: Callable[[torch.Tensor], torch.Tensor], images: Any,
                     batch_size: int = 1024, *,
                     preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Frozen features of `images`, in order, batch by batch, under no_grad and eval mode.

    images: (N, ...) tensor or numpy array. preprocess (optional) maps one batch as stored
    to the encoder's input (e.g. uint8 -> normalised float32); device (optional) is where
    batches go before encoding. If encode_image is a module or a bound method of one (e.g.
    `model.encode_image`), every submodule's own train/eval flag is restored afterwards.
    Returns (N, D) float32 CPU tensor.
    """
    modules = _modules_of(encode_image)
    was_training = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        data, chunks = _to_tensor(images), []
        with torch.no_grad():
            for start in range(0, data.shape[0], batch_size):
                batch = data[start:start + batch_size]
                batch = batch.to(device) if device is not None else batch
                batch = preprocess(batch) if preprocess is not None else batch
                chunks.append(_to_tensor(encode_image(batch)).float().cpu())
        return torch.cat(chunks)
    finally:
        for module, training in zip(modules, was_training):
            module.training = training


def linear_probe_top1(train_features: Any, train_labels: Any, test_features: Any,
                      test_labels: Any, *, num_classes: int, epochs: int = PROBE_STEPS,
                      weight_decay: float = PROBE_WEIGHT_DECAY, seed: int = 0) -> float:
    """Top-1 on the test split of a logistic-regression probe fitted on frozen train features.

    Features are standardised with the train split's mean and std (both splits); the
    multinomial logistic regression (weights and bias) is fitted by full-batch L-BFGS with a
    strong-Wolfe line search for `epochs` iterations, initialised from N(0, 0.01^2) drawn with
    `seed`. The defaults are fixed constants, never chosen on the test split. Deterministic for
    a seed on a given machine. About a second on 2 CPU cores for 60k x 128.

    train_features (N, D) float, train_labels (N,) integer in [0, num_classes), test_features
    (M, D), test_labels (M,): numpy arrays or tensors. Returns accuracy in [0, 1].
    """
    train = _to_tensor(train_features).detach().float().cpu()
    test = _to_tensor(test_features).detach().float().cpu()
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    targets = _to_tensor(train_labels, torch.int64).cpu()

    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(train.shape[1], num_classes, generator=generator) * 0.01)
    weight.requires_grad_(True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=epochs,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train @ weight + bias, targets)
        loss = loss + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return _top1(test @ weight + bias, test_labels)
