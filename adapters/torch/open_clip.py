"""SCAN inside open_clip: a `ClipLoss` that also gives the per-sample parts, ids carried through
open_clip's data loaders, and the learning-rate step by fractional epoch.

Importable without open_clip (it needs torch only); `adapters.torch.open_clip_train` wires
these into open_clip_train's `main` through the patch in this folder (docs/open_clip.md).

- `ClipLossWithParts(local_loss, gather_with_grad, cache_labels, rank, world_size)`: the
  arguments, outputs and gradients of `open_clip.loss.ClipLoss`; `parts(...)` also returns
  the (2, B) per-sample losses of this rank's rows, and `on_parts` hands them on each step.
- `WithIds(dataset)`, `IdBatches(loader, slot)`: a map-style dataset whose items end with the
  sample id, and a loader face that yields open_clip's `(images, texts)` while the ids of the
  batch wait in an `IdSlot` until the loss takes them (train.py is left untouched).
- `FractionalEpochSchedule(schedule, nominal_batches_per_epoch)`: open_clip's
  `scheduler(step)` fed `nominal * (epoch + i / batches_this_epoch)`, so an epoch that pruning
  shrinks still spans one nominal epoch of the schedule, which then ends where an unpruned run
  ends (the authors' fork indexed steps by the shrunken epoch length: its schedule ran back).

>>> import torch
>>> loss = ClipLossWithParts()
>>> feats = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
>>> parts = loss.parts(feats, feats.flip(0), torch.tensor(10.0))
>>> tuple(parts.per_sample.shape), bool(torch.isclose(parts.loss, parts.per_sample.mean()))
((2, 4), True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from adapters.torch.distributed import _AllGatherWithGrad
from adapters.torch.losses import ContrastiveLoss
from scan_core.errors import ScanConfigError, ScanInputError, ScanStateError

PartsCallback = Callable[[torch.Tensor], None]


def gather_like_open_clip(image_features: torch.Tensor, text_features: torch.Tensor, *,
                          local_loss: bool, gather_with_grad: bool, rank: int,
                          world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' (B, D) features in rank order, with open_clip's gradient rules.

    With gather_with_grad every rank's slice carries gradient. Without it the gathered copies
    carry none, and only without local_loss is this rank's own slice put back (its gradient
    then flows through the global logits); under local_loss the own rows already carry it.
    Our all-gather-with-grad replaces torch.distributed.nn's (see adapters.torch.distributed).
    """
    if gather_with_grad:
        return _AllGatherWithGrad.apply(image_features), _AllGatherWithGrad.apply(text_features)
    images = [torch.zeros_like(image_features) for _ in range(world_size)]
    texts = [torch.zeros_like(text_features) for _ in range(world_size)]
    dist.all_gather(images, image_features.detach().contiguous())
    dist.all_gather(texts, text_features.detach().contiguous())
    if not local_loss:
        images[rank], texts[rank] = image_features, text_features
    return torch.cat(images, dim=0), torch.cat(texts, dim=0)


class ClipLossWithParts(nn.Module):
    """open_clip's `ClipLoss`, whose per-sample parts are kept rather than averaged away.

    Args: as `open_clip.loss.ClipLoss` (use_horovod is refused: its gather is not ours to
      check). on_parts: called with the detached (2, B) per-sample losses of this rank's own
      samples (row 0 image->text, row 1 text->image) after each forward.

    `forward` returns what ClipLoss returns (the scalar, or {"contrastive_loss": scalar}), so
    train.py's `sum(losses.values())` is unchanged. The scalar equals ClipLoss's: without
    local_loss every rank computes the global mean; with it, the mean over its own rows.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False,
                 cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 use_horovod: bool = False, *, on_parts: PartsCallback | None = None) -> None:
        super().__init__()
        if use_horovod:
            raise ScanConfigError("ClipLossWithParts: use_horovod=True is not supported (SCAN "
                                  "gathers with torch.distributed); run open_clip with torchrun.")
        if not 0 <= rank < world_size:
            raise ScanConfigError(f"rank must lie in [0, world_size={world_size}), got {rank}.")
        self.local_loss, self.gather_with_grad = bool(local_loss), bool(gather_with_grad)
        self.cache_labels = bool(cache_labels)
        self.rank, self.world_size = int(rank), int(world_size)
        self.on_parts = on_parts
        self.prev_num_logits = 0
        self.labels: dict[torch.device, torch.Tensor] = {}

    def get_ground_truth(self, device: torch.device, num_logits: int) -> torch.Tensor:
        """Targets of this rank's rows: offset by rank * B under local_loss (global columns)."""
        if self.prev_num_logits != num_logits or device not in self.labels:
            labels = torch.arange(num_logits, device=device, dtype=torch.long)
            if self.world_size > 1 and self.local_loss:
                labels = labels + num_logits * self.rank
            if self.cache_labels:
                self.labels[device] = labels
                self.prev_num_logits = num_logits
            return labels
        return self.labels[device]

    def parts(self, image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None
              ) -> ContrastiveLoss:
        """ContrastiveLoss(loss, per_sample (2, B) of this rank's rows, attached to the graph)."""
        batch = image_features.shape[0]
        if image_features.ndim != 2 or text_features.shape != image_features.shape:
            raise ScanInputError(
                f"image_features {tuple(image_features.shape)} and text_features "
                f"{tuple(text_features.shape)} must both be (B, D) of the same shape.")
        if self.world_size > 1:
            all_images, all_texts = gather_like_open_clip(
                image_features, text_features, local_loss=self.local_loss,
                gather_with_grad=self.gather_with_grad, rank=self.rank,
                world_size=self.world_size)
            if self.local_loss:
                per_image = logit_scale * image_features @ all_texts.T
                per_text = logit_scale * text_features @ all_images.T
            else:
                per_image = logit_scale * all_images @ all_texts.T
                per_text = per_image.T
        else:
            per_image = logit_scale * image_features @ text_features.T
            per_text = logit_scale * text_features @ image_features.T
        if logit_bias is not None:
            per_image, per_text = per_image + logit_bias, per_text + logit_bias
        labels = self.get_ground_truth(image_features.device, per_image.shape[0])
        rows = torch.stack([F.cross_entropy(per_image, labels, reduction="none"),
                            F.cross_entropy(per_text, labels, reduction="none")])
        # The scalar is the mean over the rows this rank computes (all ranks' rows without
        # local_loss), summed in ClipLoss's order (mean per direction, then their mean) so it
        # equals ClipLoss to the last float32 bit; the parts are this rank's own samples only.
        own = rows if rows.shape[1] == batch else rows[:, self.rank * batch:(self.rank + 1) * batch]
        return ContrastiveLoss((rows[0].mean() + rows[1].mean()) / 2, own)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None,
                output_dict: bool = False, **unused: Any) -> Any:
        if unused:
            raise ScanConfigError(
                f"ClipLossWithParts got model outputs {sorted(unused)} that a CLIP loss does "
                "not use (CoCa or distillation): SCAN supports open_clip's plain CLIP loss only.")
        result = self.parts(image_features, text_features, logit_scale, logit_bias)
        if self.on_parts is not None:
            self.on_parts(result.per_sample.detach())
        return {"contrastive_loss": result.loss} if output_dict else result.loss


class WithIds(torch.utils.data.Dataset):
    """A map-style dataset whose items are the wrapped item's fields followed by the index:
    open_clip's CsvDataset gives (image, tokens) and this gives (image, tokens, id)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        return (*(item if isinstance(item, tuple) else (item,)), int(index))


class IdSlot:
    """The ids of the batch in flight, between the loader that read them and the loss that
    records them. Two puts without a take, or a take without a put, raise: either would pair
    losses with the wrong samples (e.g. --accum-freq > 1 runs several batches per step)."""

    def __init__(self) -> None:
        self._ids: np.ndarray | None = None

    def put(self, ids: torch.Tensor | np.ndarray) -> None:
        if self._ids is not None:
            raise ScanStateError(
                f"a new batch arrived while the ids of the previous one ({self._ids.size} ids) "
                "were never taken by the loss: every batch must pass through the SCAN loss "
                "once (gradient accumulation, --accum-freq > 1, is not supported).")
        self._ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids,
                               dtype=np.int64)

    def take(self, batch_size: int) -> np.ndarray:
        ids, self._ids = self._ids, None
        if ids is None:
            raise ScanStateError(
                "the SCAN loss ran without a batch from the SCAN loader: build the training "
                "data with adapters.torch.open_clip_train (the --scan patch) so ids travel.")
        if ids.size != batch_size:
            raise ScanInputError(
                f"the loss saw {batch_size} samples but the batch carried {ids.size} ids.")
        return ids

    def clear(self) -> None:
        self._ids = None


class IdBatches:
    """open_clip's training loader face over a loader of (images, texts, ids) batches: yields
    (images, texts) and puts ids in `slot`. `num_batches` / `num_samples` are the current
    epoch's (train.py reads them after `set_epoch`, for its progress and its step index)."""

    def __init__(self, loader: Any, slot: IdSlot, *, num_batches: int, num_samples: int) -> None:
        self.loader, self.slot = loader, slot
        self.num_batches, self.num_samples = int(num_batches), int(num_samples)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.loader is None:
            raise ScanStateError("the SCAN training data were iterated before set_epoch(epoch) "
                                 "planned the epoch.")
        self.slot.clear()
        for images, texts, ids in self.loader:
            self.slot.put(ids)
            yield images, texts


def fractional_step(epoch: int, batch_index: int, batches_this_epoch: int,
                    nominal_batches_per_epoch: int) -> float:
    """The schedule position of batch `batch_index` of `epoch`, in nominal (unpruned) steps:
    nominal * (epoch + batch_index / batches_this_epoch).

    >>> fractional_step(2, 5, 10, 40)   # half way through a quarter-size epoch 2
    100.0
    """
    if batches_this_epoch < 1 or not 0 <= batch_index < batches_this_epoch:
        raise ScanInputError(
            f"batch_index must lie in [0, batches_this_epoch={batches_this_epoch}), got "
            f"{batch_index}: the loader served more batches than its epoch announced.")
    # nominal * epoch + nominal * i / n: exact integers when n == nominal (nothing pruned)
    return float(nominal_batches_per_epoch * epoch
                 + nominal_batches_per_epoch * batch_index / batches_this_epoch)


class FractionalEpochSchedule:
    """Wraps open_clip's `scheduler(step)` (cosine_lr, const_lr, ...) so that a pruned epoch
    covers exactly one nominal epoch of the schedule.

    train.py calls it with `step = num_batches * epoch + i`, where num_batches is the current
    epoch's (IdBatches); `set_epoch(epoch, batches_this_epoch)` (called by the SCAN data before
    each epoch) lets it recover i and feed `fractional_step(...)` to the wrapped schedule.
    With no pruning the step passes through unchanged.
    """

    def __init__(self, schedule: Callable[[float], float], nominal_batches_per_epoch: int) -> None:
        if nominal_batches_per_epoch < 1:
            raise ScanConfigError(
                f"nominal_batches_per_epoch must be >= 1, got {nominal_batches_per_epoch}.")
        self.schedule = schedule
        self.nominal = int(nominal_batches_per_epoch)
        self.epoch: int | None = None
        self.batches_this_epoch = 0

    def set_epoch(self, epoch: int, batches_this_epoch: int) -> None:
        self.epoch, self.batches_this_epoch = int(epoch), int(batches_this_epoch)

    def __call__(self, step: int) -> float:
        if self.epoch is None:
            raise ScanStateError("FractionalEpochSchedule: set_epoch() was never called.")
        index = step - self.batches_this_epoch * self.epoch
        return self.schedule(fractional_step(self.epoch, index, self.batches_this_epoch,
                                             self.nominal))
