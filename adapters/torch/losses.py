"""Per-sample InfoNCE for CLIP and MoCo v3: the training loss and its unreduced per-view
per-sample parts from one computation (no second forward).

CLIP (two views): row i of the image->text logits and column i (row i of text->image) give
`per_sample[0, i]` and `per_sample[1, i]`; `loss == per_sample.mean()` is the standard CLIP loss
(the mean of the two directions).

MoCo v3 (two views): `per_sample[0] = ctr(q1, k2)` and `per_sample[1] = ctr(q2, k1)`, each the
unreduced cross-entropy times 2 * temperature as in MoCo v3; `loss == per_sample.mean(1).sum()`.

Data parallelism: features are gathered from all ranks; labels are offset by rank * B so that
sample i of this rank matches column rank * B + i. `per_sample` always holds this rank's own B
samples (columns in batch order), so each rank records exactly its own ids.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from adapters.torch.distributed import gather_features


class ContrastiveLoss(NamedTuple):
    """loss: scalar to backpropagate. per_sample: (num_views, B) this rank's per-sample losses,
    still attached to the graph (call .detach() before handing them to the pruner)."""

    loss: torch.Tensor
    per_sample: torch.Tensor


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return values.mean() if weights is None else (values * weights).mean()


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor | float, *, gather: bool = True,
              local_loss: bool = False, gather_with_grad: bool = False,
              weights: torch.Tensor | None = None) -> ContrastiveLoss:
    """CLIP's symmetric InfoNCE with per-sample parts.

    image_features, text_features: (B, D) this rank's features, already L2-normalised.
    logit_scale: the exp'ed scale (a tensor keeps its gradient).
    gather: under torch.distributed, contrast against all ranks' features (CLIP's global batch).
    local_loss: rows are this rank's samples only, columns the global batch (open_clip's
      --local-loss); otherwise every rank computes the full global logit matrix.
    gather_with_grad: all-gather with gradient (open_clip's --gather-with-grad); without it the
      gathered copies carry no gradient except this rank's own slice, put back in place.
    weights: optional (B,) per-sample loss weights (InfoBatch's 1 / (1 - r)), both views.
    Returns ContrastiveLoss(loss, per_sample (2, B)).
    """
    _check_pair(image_features, text_features, "image_features", "text_features")
    rank, world = _world()
    batch = image_features.shape[0]
    if not gather or world == 1:
        logits = logit_scale * image_features @ text_features.T
        labels = torch.arange(batch, device=logits.device)
        per_sample = torch.stack([F.cross_entropy(logits, labels, reduction="none"),
                                  F.cross_entropy(logits.T, labels, reduction="none")])
        return ContrastiveLoss(_weighted_mean(per_sample, weights), per_sample)
    all_images = gather_features(image_features, with_grad=gather_with_grad)
    all_texts = gather_features(text_features, with_grad=gather_with_grad)
    own = slice(rank * batch, (rank + 1) * batch)
    if local_loss:
        labels = torch.arange(batch, device=image_features.device) + rank * batch
        per_sample = torch.stack([
            F.cross_entropy(logit_scale * image_features @ all_texts.T, labels, reduction="none"),
            F.cross_entropy(logit_scale * text_features @ all_images.T, labels, reduction="none")])
        return ContrastiveLoss(_weighted_mean(per_sample, weights), per_sample)
    # Every rank computes the whole global loss (as open_clip does without --local-loss); the
    # per-sample slice it returns is its own rows.
    logits = logit_scale * all_images @ all_texts.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    everyone = torch.stack([F.cross_entropy(logits, labels, reduction="none"),
                            F.cross_entropy(logits.T, labels, reduction="none")])
    all_weights = None if weights is None else gather_features(weights.detach(), with_grad=False)
    return ContrastiveLoss(_weighted_mean(everyone, all_weights), everyone[:, own])


def moco_loss(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor,
              temperature: float = 0.2, *, gather: bool = True,
              weights: torch.Tensor | None = None) -> ContrastiveLoss:
    """MoCo v3's symmetric loss ctr(q1, k2) + ctr(q2, k1) with per-sample parts.

    q1, q2: (B, D) predictor outputs of the two crops; k1, k2: (B, D) momentum-encoder outputs
    (no gradient flows into keys). Features are L2-normalised here, as MoCo v3 does. Keys are
    gathered from all ranks; labels are offset by rank * B.
    weights: optional (B,) per-sample loss weights for both views.
    Returns ContrastiveLoss(loss, per_sample (2, B)), loss == (weights *) per_sample.mean(1).sum().
    """
    _check_pair(q1, q2, "q1", "q2")
    _check_pair(k1, k2, "k1", "k2")
    _check_pair(q1, k1, "q1", "k1")
    rank, world = _world()
    use_gather = gather and world > 1

    def ctr(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
        keys = gather_features(k, with_grad=False) if use_gather else k
        logits = q @ keys.T / temperature
        labels = torch.arange(q.shape[0], device=q.device) + (rank * q.shape[0] if use_gather else 0)
        return F.cross_entropy(logits, labels, reduction="none") * (2 * temperature)

    per_sample = torch.stack([ctr(q1, k2), ctr(q2, k1)])
    weighted = per_sample if weights is None else per_sample * weights
    return ContrastiveLoss(weighted.mean(dim=1).sum(), per_sample)


def _check_pair(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{name_a} and {name_b} must be (B, D) features with a batch dimension, "
                         f"got shapes {tuple(a.shape)} and {tuple(b.shape)}.")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have "
                         "the same (B, D) shape.")
