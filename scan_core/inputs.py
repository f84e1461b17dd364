"""What `ScanPruner` accepts (its constructor's arguments, `record`'s batches), and the errors
that name what it got instead."""

from __future__ import annotations

from typing import Any

import numpy as np

from scan_core.config import ScanConfig
from scan_core.coverage import POLICIES as COVERAGE_POLICIES
from scan_core.errors import ScanConfigError, ScanInputError

HISTORY_DTYPES = ("float16", "float32")


def check_arguments(num_samples: Any, num_views: Any, config: Any, store: Any,
                    loss_history: Any, coverage: Any) -> None:
    """Refuse ScanPruner's constructor arguments that are not what its docstring allows."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 1:
        raise ScanConfigError(f"num_samples must be an int >= 1, got {num_samples!r}.")
    if isinstance(num_views, bool) or not isinstance(num_views, (int, np.integer)) \
            or num_views < 1:
        raise ScanConfigError(f"num_views must be an int >= 1, got {num_views!r}.")
    if config is not None and not isinstance(config, ScanConfig):
        raise ScanConfigError(f"config must be a ScanConfig, got {type(config).__name__}.")
    if loss_history is not None and loss_history not in HISTORY_DTYPES:
        raise ScanConfigError(
            f"loss_history must be None or one of {HISTORY_DTYPES}, got {loss_history!r}.")
    if coverage not in COVERAGE_POLICIES:
        raise ScanConfigError(
            f"coverage must be one of {COVERAGE_POLICIES}, got {coverage!r}.")
    if loss_history is not None and store is None:
        raise ScanConfigError("loss_history needs a store to write the losses to.")


# Codes returned by the record kernel (scan_core.select.record_batch).
OUT_OF_RANGE, REPEATED, PRUNED, NON_FINITE = 1, 2, 3, 4


def as_ids(ids: Any) -> np.ndarray:
    """(B,) int64 contiguous ids, or ScanInputError for floats, bools, other shapes."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ScanInputError(
            f"ids must be an integer array, got dtype {ids.dtype}; pass the dataset indices "
            "of the batch (e.g. torch.long / np.int64).")
    if ids.ndim != 1:
        raise ScanInputError(f"ids must be 1-D (B,), got shape {ids.shape}.")
    return np.ascontiguousarray(ids, dtype=np.int64)


def as_losses(losses: Any, num_views: int, batch: int) -> np.ndarray:
    """(num_views, B) float32/float64 contiguous losses; (B,) accepted when num_views == 1."""
    losses = np.asarray(losses)
    if losses.dtype.kind not in "fiu":
        raise ScanInputError(f"losses must be real numbers, got dtype {losses.dtype}.")
    if losses.ndim == 1 and num_views == 1:
        losses = losses[None, :]
    if losses.shape != (num_views, batch):
        raise ScanInputError(
            f"losses must have shape (num_views, B) = ({num_views}, {batch}), got "
            f"{losses.shape}: one row per view (e.g. CLIP's image->text and text->image), "
            "one column per id, no batch mean.")
    if losses.dtype not in (np.float32, np.float64):
        losses = losses.astype(np.float32 if losses.dtype == np.float16 else np.float64)
    return np.ascontiguousarray(losses)


def raise_bad_batch(code: int, pos: int, ids: np.ndarray, losses: np.ndarray,
                    num_samples: int, epoch: int) -> None:
    """Turn a record-kernel code into the error that names the offending id and value."""
    if code == OUT_OF_RANGE:
        raise ScanInputError(
            f"id {int(ids[pos])} at batch position {pos} is out of range [0, {num_samples}).")
    if code == REPEATED:
        raise ScanInputError(
            f"id {int(ids[pos])} is repeated within one batch (position {pos}); each sample "
            "appears at most once per batch.")
    if code == PRUNED:
        raise ScanInputError(
            f"id {int(ids[pos])} (batch position {pos}) was pruned from epoch {epoch}'s plan, "
            "yet it was trained on: the data loader is not serving this epoch's plan (a sampler "
            "whose set_epoch was never called?).")
    raise ScanInputError(
        f"losses hold a non-finite value ({losses[:, pos].tolist()}) for sample id "
        f"{int(ids[pos])} (batch position {pos}); check the loss for overflow or a bad input "
        "before handing it over.")
