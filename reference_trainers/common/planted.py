"""How well SCAN's candidates find the noise planted in the training data (issue 6, suite 5).

The CLIP data can plant captions that name a wrong class (`mismatched`, bool (N,)) and both
trainers can plant near-duplicate images (`duplicate_of`, int (N,): the source's position, -1
elsewhere; the copies are the planted samples, their sources are ordinary ones). After each
preparation epoch the trainers add to the epoch's metrics row:

- ill_recall / ill_precision: planted mismatches among the ill-matched (high-loss) candidates;
- redundant_recall / redundant_precision: planted near-duplicate copies among the redundant
  (low-loss) candidates;
- num_ill, num_redundant, num_mismatched, num_duplicates: the counts behind them;
- churn_*: how D' changed since the previous preparation (`PreparationStats`);
- num_retired, retired_recall / retired_precision: under `ScanConfig(retire_share=...)`
  (issue 20), the samples dropped for the rest of the run so far, scored like the ill end.

A recall with nothing planted and a precision with no candidates are undefined: None. The
store keeps only the two newest snapshots of D', so this is computed while the epoch's D' is
in hand, right after `pruner.end_epoch()`. Torch-free: numpy in, numbers out.

>>> import numpy as np
>>> mismatched = np.array([1, 1, 0, 0, 0, 0], bool)
>>> q = candidate_quality(np.array([0, 2]), np.array([], int), mismatched=mismatched)
>>> q["ill_recall"], q["ill_precision"]
(0.5, 0.5)
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUALITY_KEYS = ("ill_recall", "ill_precision", "redundant_recall", "redundant_precision")


def _recall_precision(candidates: np.ndarray, planted: np.ndarray) -> tuple[float | None,
                                                                             float | None]:
    hits = int(planted[candidates].sum()) if len(candidates) else 0
    num_planted = int(planted.sum())
    recall = hits / num_planted if num_planted else None
    precision = hits / len(candidates) if len(candidates) else None
    return recall, precision


def candidate_quality(ill_ids: np.ndarray, redundant_ids: np.ndarray, *,
                      mismatched: np.ndarray | None = None,
                      duplicate_of: np.ndarray | None = None) -> dict[str, Any]:
    """Recall and precision of the planted samples among candidate ids.

    ill_ids, redundant_ids: int ids in [0, N) of the two ends of D' (they may overlap).
    mismatched: bool (N,) planted wrong captions; duplicate_of: int (N,), >= 0 marks a planted
    near-duplicate copy. Keys for a kind of noise appear only when the data has planted some.
    """
    out: dict[str, Any] = {}
    ill_ids = np.asarray(ill_ids, dtype=np.int64)
    redundant_ids = np.asarray(redundant_ids, dtype=np.int64)
    if mismatched is not None and np.any(mismatched):
        planted = np.asarray(mismatched, dtype=bool)
        out["ill_recall"], out["ill_precision"] = _recall_precision(ill_ids, planted)
        out["num_mismatched"] = int(planted.sum())
    if duplicate_of is not None and np.any(np.asarray(duplicate_of) >= 0):
        planted = np.asarray(duplicate_of) >= 0
        out["redundant_recall"], out["redundant_precision"] = _recall_precision(redundant_ids,
                                                                                planted)
        out["num_duplicates"] = int(planted.sum())
    if out:
        out["num_ill"], out["num_redundant"] = len(ill_ids), len(redundant_ids)
    return out


class PreparationStats:
    """Called right after each `pruner.end_epoch()` (a trainer's `extra_stats`): after a
    preparation epoch, the `candidate_quality` of the new D' and its churn against the D' it
    replaces; {} after any other epoch.

    Churn: churn_kept (ids in both), churn_entered (new only), churn_left (old only) and
    churn_jaccard (|old & new| / |old | new|); absent at the first preparation. The previous D'
    is the pruner's D' when this object is built (a resumed run's, restored from the store) and
    then each preparation's, so a resumed run reports the same churn as one that never stopped.
    """

    def __init__(self, pruner: Any, *, mismatched: np.ndarray | None = None,
                 duplicate_of: np.ndarray | None = None) -> None:
        self.pruner = pruner
        self.mismatched, self.duplicate_of = _host(mismatched), _host(duplicate_of)
        prepared = any(entry["phase"] == "prepare" for entry in pruner.log)
        self._previous = pruner.candidate_ids("both") if prepared else None

    def __call__(self) -> dict[str, Any]:
        log = self.pruner.log
        if not log or log[-1]["phase"] != "prepare":
            return {}
        out = candidate_quality(self.pruner.candidate_ids("ill_matched"),
                                self.pruner.candidate_ids("redundant"),
                                mismatched=self.mismatched, duplicate_of=self.duplicate_of)
        if self.pruner.config.retire_share > 0:  # issue 20's rule (c): the set dropped for good
            out.update(retired_quality(self.pruner.candidate_ids("retired"), self.mismatched))
        current = self.pruner.candidate_ids("both")
        if self._previous is not None:
            out.update(candidate_churn(self._previous, current))
        self._previous = current
        return out


def retired_quality(retired_ids: np.ndarray, mismatched: np.ndarray | None) -> dict[str, Any]:
    """num_retired, and with planted wrong captions the retired set's recall and precision of
    them (retired_recall / retired_precision: None where undefined, as above)."""
    out: dict[str, Any] = {"num_retired": len(retired_ids)}
    if mismatched is not None and np.any(mismatched):
        out["retired_recall"], out["retired_precision"] = _recall_precision(
            np.asarray(retired_ids, dtype=np.int64), np.asarray(mismatched, dtype=bool))
    return out


def candidate_churn(old_ids: np.ndarray, new_ids: np.ndarray) -> dict[str, Any]:
    """How D' changed between two preparation epochs (sorted unique int ids in, counts out)."""
    kept = len(np.intersect1d(old_ids, new_ids, assume_unique=True))
    union = len(old_ids) + len(new_ids) - kept
    return {"churn_kept": kept, "churn_entered": len(new_ids) - kept,
            "churn_left": len(old_ids) - kept,
            "churn_jaccard": kept / union if union else None}


def _host(values: Any) -> np.ndarray | None:
    """A numpy copy of a numpy array or a (CPU or GPU) torch tensor, without importing torch."""
    if values is None:
        return None
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)
