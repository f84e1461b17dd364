"""Candidate quality (suite 5): how well D' holds the noise planted in the training data.

The numbers are computed by the trainers while each preparation epoch's D' is in hand
(common/planted.PreparationStats, in the metrics rows), since the store keeps only the two
newest snapshots. Here: collecting them per preparation epoch from a result, and recomputing
them from a run directory's newest snapshot and planted.npz (a cross-check, and the way to
score a run trained before the hook existed, for its last D' only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reference_trainers.common.planted import QUALITY_KEYS, candidate_quality
from scan_core import LossStore, bitset


def preparation_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics rows of a result's preparation epochs, with k = 1, 2, ... added."""
    preps = [r for r in result.get("metrics", []) if r.get("phase") == "prepare"]
    return [{"k": k, **r} for k, r in enumerate(preps, start=1)]


def snapshot_candidates(run_dir: str | Path, epoch: int | None = None
                        ) -> tuple[int, np.ndarray, np.ndarray]:
    """(epoch, ill ids, redundant ids) of D' in a stored snapshot (default the newest)."""
    path = Path(run_dir) / "scan.zarr"
    store = LossStore.open(path, LossStore.read_meta(path), writable=False)
    if epoch is None:
        epoch = store.epochs()[-1]
    state = store.load_epoch(epoch)
    n = int(state["num_samples"])
    return (epoch, bitset.ids_of(np.asarray(state["ill_bits"]), n, True),
            bitset.ids_of(np.asarray(state["red_bits"]), n, True))


def store_quality(run_dir: str | Path, epoch: int | None = None) -> dict[str, Any]:
    """candidate_quality of a stored D' against the run's planted.npz."""
    epoch, ill, red = snapshot_candidates(run_dir, epoch)
    planted = np.load(Path(run_dir) / "planted.npz")
    out = candidate_quality(ill, red,
                            mismatched=planted["mismatched"] if "mismatched" in planted else None,
                            duplicate_of=planted["duplicate_of"])
    return {"epoch": epoch, **out}


__all__ = ["QUALITY_KEYS", "preparation_rows", "snapshot_candidates", "store_quality"]
