"""Per-sample InfoNCE for CLIP and MoCo v3 in jnp: the training loss and its unreduced per-view
per-sample parts from one computation (no second forward), with the semantics of
`adapters.torch.losses` to float32 rounding.

CLIP (two views): row i of the image->text logits and column i (row i of text->image) give
`per_sample[0, i]` and `per_sample[1, i]`; `loss == per_sample.mean()` is the standard CLIP loss.

MoCo v3 (two views): `per_sample[0] = ctr(q1, k2)` and `per_sample[1] = ctr(q2, k1)`, each the
unreduced cross-entropy times 2 * temperature as in MoCo v3; `loss == per_sample.mean(1).sum()`.

Both are pure functions of their arguments: they jit, differentiate and vmap. Shapes are static
under jit, so the input checks run once, at trace time.

A padded batch (`valid`): jit compiles once per input shape, and a pruned epoch's last batch
has a new length every epoch. Pad it to the full batch size with copies of real rows
(`adapters.jax.pad_batch`) and pass the (B,) boolean `valid`: padded rows and columns then take
no part in any sample's softmax nor in the loss, which equals the unpadded batch's to float
rounding (gradients too); `per_sample` is 0 in padded columns (record only the valid ones:
`AsyncRecorder.push(ids, per_sample, valid=valid)`). BatchNorm in the encoders needs the same
mask for its batch statistics (flax's `nn.BatchNorm(...)(x, mask=...)`).

Data parallelism, two ways:
- **GSPMD (recommended).** Under plain `jax.jit`, pass the global batch as arrays sharded over
  the batch axis (`shard_batch`); the function sees the whole batch and XLA inserts the
  collectives. `per_sample` comes back sharded like the batch, so each process records its own
  rows (`AsyncRecorder` does).
- **Named axis.** Inside `jax.shard_map` (or `pmap`) over an axis, pass `axis_name`: features are
  all-gathered over it (labels offset by `axis_index * B`) and `per_sample` holds this shard's
  own B rows, as the torch adapter's gathering does. `loss` is the global batch's loss, the
  same on every shard (a `pmean`, so shard_map sees it as replicated: `out_specs=P()`).
  Differentiated inside, it gives the global gradient: under shard_map's default
  `check_vma=True` the gradient of a replicated parameter is already the global one (the
  implicit psum of the shards' parts); under `pmap` or `check_vma=False` each shard holds
  world_size times its own part, and the usual `pmean` of the gradients restores the global
  gradient (what DDP's averaging does for the torch adapter's gather_with_grad). The
  two-device tests hold both paths to the one-device gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = Any  # jax.Array or anything jnp.asarray takes


class ContrastiveLoss(NamedTuple):
    """loss: scalar to differentiate. per_sample: (num_views, B) float, this shard's per-sample
    losses (wrap in `jax.lax.stop_gradient` or simply return them as an aux output; the pruner
    only ever sees their values)."""

    loss: jax.Array
    per_sample: jax.Array


def clip_loss(image_features: Array, text_features: Array, logit_scale: Array | float, *,
              weights: Array | None = None, valid: Array | None = None,
              axis_name: Any = None) -> ContrastiveLoss:
    """CLIP's symmetric InfoNCE with per-sample parts.

    image_features, text_features: (B, D) features, already L2-normalised.
    logit_scale: the exp'ed temperature scale, a scalar (an array keeps its gradient).
    weights: optional (B,) per-sample loss weights (InfoBatch's 1 / (1 - r)), both views.
    valid: optional (B,) bool, False on padding rows (module docstring): they are left out of
      every softmax and of the loss; their `per_sample` is 0.
    axis_name: inside `shard_map` / `pmap`, the named batch axis: every shard computes the
      global-batch loss from all-gathered features (the torch adapter's default gather mode),
      `loss` is that global loss on every shard, and `per_sample` holds the shard's own rows.
      Gradients: see the module docstring.
    Returns ContrastiveLoss(loss, per_sample (2, B)).

    >>> import jax.numpy as jnp
    >>> f = jnp.eye(4)
    >>> out = clip_loss(f, f, 10.0)
    >>> out.per_sample.shape
    (2, 4)
    """
    _check_pair(image_features, text_features, "image_features", "text_features")
    batch = jnp.shape(image_features)[0]
    weights = _check_weights(weights, batch)
    valid = _check_valid(valid, batch)
    if axis_name is None:
        logits = logit_scale * image_features @ text_features.T
        per_sample = jnp.stack([_diagonal_ce(logits, valid), _diagonal_ce(logits.T, valid)])
        return ContrastiveLoss(_weighted_mean(per_sample, weights, valid), per_sample)
    all_images = jax.lax.all_gather(image_features, axis_name, tiled=True)
    all_texts = jax.lax.all_gather(text_features, axis_name, tiled=True)
    logits = logit_scale * all_images @ all_texts.T
    all_valid = None if valid is None else jax.lax.all_gather(valid, axis_name, tiled=True)
    everyone = jnp.stack([_diagonal_ce(logits, all_valid), _diagonal_ce(logits.T, all_valid)])
    all_weights = None if weights is None else jax.lax.all_gather(
        jax.lax.stop_gradient(weights), axis_name, tiled=True)
    start = jax.lax.axis_index(axis_name) * batch
    own = jax.lax.dynamic_slice_in_dim(everyone, start, batch, axis=1)
    # Every shard holds the same value; pmean makes that visible to shard_map (an invariant
    # output) and, transposed, gives each shard 1/world of the cotangent, so the implicit psum
    # over replicated parameters yields exactly the global gradient.
    return ContrastiveLoss(
        jax.lax.pmean(_weighted_mean(everyone, all_weights, all_valid), axis_name), own)


def moco_loss(q1: Array, q2: Array, k1: Array, k2: Array, temperature: float = 0.2, *,
              weights: Array | None = None, valid: Array | None = None,
              axis_name: Any = None) -> ContrastiveLoss:
    """MoCo v3's symmetric loss ctr(q1, k2) + ctr(q2, k1) with per-sample parts.

    q1, q2: (B, D) predictor outputs of the two crops; k1, k2: (B, D) momentum-encoder outputs.
    Features are L2-normalised here, as MoCo v3 does; keys pass through `stop_gradient`.
    temperature: the softmax temperature (MoCo v3: 0.2 for ViT, 1.0 for ResNet).
    weights: optional (B,) per-sample loss weights for both views.
    valid: optional (B,) bool, False on padding rows (module docstring): padded keys are no
      query's negatives and padded queries are out of the loss (the mean over valid rows);
      their `per_sample` is 0.
    axis_name: inside `shard_map` / `pmap`, the named batch axis: keys are all-gathered over it
      and labels offset by `axis_index * B` (MoCo v3's concat_all_gather); `loss` is the
      global batch's mean (pmean of the shards' means) and `per_sample` the shard's own rows.
      Gradients: see the module docstring.
    Returns ContrastiveLoss(loss, per_sample (2, B)), loss == (weights *) per_sample.mean(1).sum().
    """
    _check_pair(q1, q2, "q1", "q2")
    _check_pair(k1, k2, "k1", "k2")
    _check_pair(q1, k1, "q1", "k1")
    batch = jnp.shape(q1)[0]
    weights = _check_weights(weights, batch)
    valid = _check_valid(valid, batch)
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch
    key_valid = valid if valid is None or axis_name is None else jax.lax.all_gather(
        valid, axis_name, tiled=True)

    def ctr(q: jax.Array, k: jax.Array) -> jax.Array:
        q, k = _normalize(q), _normalize(jax.lax.stop_gradient(k))
        if axis_name is not None:
            k = jax.lax.all_gather(k, axis_name, tiled=True)
        logits = q @ k.T / temperature
        labels = jnp.arange(batch) + offset
        picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
        if key_valid is not None:
            logits = jnp.where(key_valid[None, :], logits, -jnp.inf)
        out = (jax.nn.logsumexp(logits, axis=1) - picked) * (2 * temperature)
        return out if valid is None else jnp.where(valid, out, 0.0)

    per_sample = jnp.stack([ctr(q1, k2), ctr(q2, k1)])
    weighted = per_sample if weights is None else per_sample * weights
    if valid is None:
        loss = weighted.mean(axis=1).sum()
        if axis_name is not None:  # the global batch's loss, as DDP's gradient averaging implies
            loss = jax.lax.pmean(loss, axis_name)
        return ContrastiveLoss(loss, per_sample)
    # The mean over the global batch's valid rows. Under a named axis the shards hold
    # different valid counts, so: pmean of this shard's sum (the gradient semantics of the
    # unpadded path) times world / the global count.
    count = valid.sum()
    if axis_name is None:
        return ContrastiveLoss(weighted.sum() / count, per_sample)
    world = jax.lax.psum(1, axis_name)
    total = jax.lax.psum(count, axis_name)
    return ContrastiveLoss(jax.lax.pmean(weighted.sum(), axis_name) * (world / total),
                           per_sample)


def _diagonal_ce(logits: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Unreduced cross-entropy of each row of a square logit matrix against its diagonal; with
    `valid`, over the valid columns only, and 0 in invalid rows."""
    if valid is None:
        return jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)
    masked = jnp.where(valid[None, :], logits, -jnp.inf)
    return jnp.where(valid, jax.nn.logsumexp(masked, axis=1) - jnp.diagonal(logits), 0.0)


def _normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) row-wise, as torch.nn.functional.normalize."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), eps)


def _weighted_mean(values: jax.Array, weights: jax.Array | None,
                   valid: jax.Array | None = None) -> jax.Array:
    """The mean of `values` (num_views, B), weighted per column; with `valid`, over the valid
    columns only (invalid columns hold 0)."""
    weighted = values if weights is None else values * weights
    if valid is None:
        return weighted.mean()
    return weighted.sum() / (values.shape[0] * valid.sum())


def _check_pair(a: Array, b: Array, name_a: str, name_b: str) -> None:
    shape_a, shape_b = tuple(jnp.shape(a)), tuple(jnp.shape(b))
    if len(shape_a) != 2 or len(shape_b) != 2:
        raise ValueError(f"{name_a} and {name_b} must be (B, D) features with a batch dimension, "
                         f"got shapes {shape_a} and {shape_b}.")
    if shape_a != shape_b:
        raise ValueError(f"{name_a} {shape_a} and {name_b} {shape_b} must have the same (B, D) "
                         "shape.")


def _check_valid(valid: Array | None, batch: int) -> jax.Array | None:
    if valid is None:
        return None
    valid = jnp.asarray(valid)
    if tuple(valid.shape) != (batch,) or valid.dtype != jnp.bool_:
        raise ValueError(f"valid must be a (B,) = ({batch},) bool array, True on real rows and "
                         f"False on padding, got dtype {valid.dtype} shape {tuple(valid.shape)}; "
                         "adapters.jax.pad_batch returns it.")
    return valid


def _check_weights(weights: Array | None, batch: int) -> jax.Array | None:
    if weights is None:
        return None
    if tuple(jnp.shape(weights)) != (batch,):
        raise ValueError(f"weights must have shape (B,) = ({batch},), one per sample, got "
                         f"{tuple(jnp.shape(weights))}; pass plan.loss_weights(ids).")
    return jax.lax.stop_gradient(jnp.asarray(weights))
