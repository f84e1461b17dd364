"""The evaluations of common/evaluation.py without torch: feature extraction and the linear
probe, on numpy features. Zero-shot top-1 with the CLIP prompt ensemble and MoCo's cosine kNN
are framework-free (common/eval_maths.py) and re-exported here.

The linear probe keeps every constant of `common.evaluation.linear_probe_top1`: features
standardised with the train split's mean and (unbiased) std, multinomial logistic regression
with a bias, mean cross-entropy + PROBE_WEIGHT_DECAY / 2 * ||W||^2, weights initialised from
N(0, 0.01^2) drawn with the seed, full-batch L-BFGS (history 20, a strong-Wolfe line search:
optax.lbfgs with its zoom line search) for PROBE_STEPS iterations, stopping early when the
largest gradient entry falls below 1e-7 as torch's L-BFGS does. Only the random draw of the
initial weights differs (numpy's generator, not torch's), which L-BFGS all but forgets;
tests/trainers/test_jax_clip_train.py compares the two probes on the same features.

>>> import numpy as np
>>> prototypes = np.eye(3, 8, dtype=np.float32)
>>> zero_shot_top1(prototypes, np.arange(3), prototypes)
1.0
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from reference_trainers.common.eval_maths import knn_top1, zero_shot_classifier, zero_shot_top1
from reference_trainers.common.probe_constants import PROBE_STEPS, PROBE_WEIGHT_DECAY

__all__ = ["extract_features", "knn_top1", "linear_probe_top1", "zero_shot_classifier",
           "zero_shot_top1"]


def extract_features(encode: Callable[[Any], Any], images: np.ndarray, *,
                     preprocess: Callable[[np.ndarray], np.ndarray],
                     batch_size: int = 1024) -> np.ndarray:
    """Frozen features of `images` in order, batch by batch: (N, D) float32 numpy.
    encode: a jitted, evaluation-mode function of one preprocessed batch."""
    chunks = [np.asarray(encode(preprocess(images[start:start + batch_size])), np.float32)
              for start in range(0, len(images), batch_size)]
    return np.concatenate(chunks)


def linear_probe_top1(train_features: np.ndarray, train_labels: np.ndarray,
                      test_features: np.ndarray, test_labels: np.ndarray, *, num_classes: int,
                      epochs: int = PROBE_STEPS, weight_decay: float = PROBE_WEIGHT_DECAY,
                      seed: int = 0) -> float:
    """Top-1 on the test split of a logistic-regression probe fitted on frozen train features
    (see the module docstring for the constants). Returns accuracy in [0, 1]."""
    train = np.asarray(train_features, np.float32)
    test = np.asarray(test_features, np.float32)
    mean = train.mean(axis=0)
    std = np.maximum(train.std(axis=0, ddof=1), 1e-6)  # torch.std is unbiased
    train, test = (train - mean) / std, (test - mean) / std
    weight = np.random.default_rng(seed).standard_normal(
        (train.shape[1], num_classes)).astype(np.float32) * 0.01
    params = {"weight": jnp.asarray(weight), "bias": jnp.zeros(num_classes, jnp.float32)}
    params = _fit_probe(params, jnp.asarray(train), jnp.asarray(train_labels, jnp.int32),
                        int(epochs), float(weight_decay))
    logits = test @ np.asarray(params["weight"]) + np.asarray(params["bias"])
    return float(np.mean(logits.argmax(axis=1) == np.asarray(test_labels)))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _fit_probe(params: dict[str, jax.Array], features: jax.Array, labels: jax.Array,
               steps: int, weight_decay: float) -> dict[str, jax.Array]:
    def loss(p):
        logits = features @ p["weight"] + p["bias"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return ce + 0.5 * weight_decay * jnp.sum(p["weight"] ** 2)

    solver = optax.lbfgs(memory_size=20)
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        p, state, i = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(p, updates), state, i + 1

    def going(carry):
        p, _, i = carry
        grad = jax.grad(loss)(p)
        largest = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grad)]))
        return (i < steps) & (largest > 1e-7)

    params, _, _ = jax.lax.while_loop(going, step, (params, solver.init(params), 0))
    return params
