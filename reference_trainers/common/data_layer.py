"""The training-data protocol every source implements (numpy only, no torch, no JAX).

A trainer takes one data object and asks it what it needs through `TrainData`, never by probing
its attributes: how many ids the pruner tracks, how its batches are served (held in memory,
decoded from files on disk, or streamed from shards), the epoch's skipped and repeated samples,
the planted-noise labels of Fashion-MNIST, the labelled images a linear probe fits on, and the
files on disk a resumed run must find unchanged. Implemented by `torch_data.ImageTextData`
(CLIP's Fashion-MNIST), `moco.data.ImageData` (MoCo's), `corpora.PathCorpus` (CSV and folder),
`moco.data.CorpusCrops` (a corpus served as MoCo's two crops) and `corpora.ShardStream`.

Why: the trainers used to tell these apart with `hasattr` branches (issue 16), which a reader
could not follow and a new source could satisfy by accident.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = ["BATCH_MODES", "BatchMode", "HeldInMemory", "NothingPlanted", "Planted", "TrainData",
           "check_train_data", "no_planted"]

BatchMode = Literal["memory", "corpus", "stream"]
# memory: `batch(ids, ...)` on tensors already held; corpus: `raw_batch(ids, ...)` decodes files
# (in --workers processes); stream: the plan's kept ids are read shard by shard
# (`steps_per_rank(plan, batch_size)` batches on every rank).
BATCH_MODES: tuple[str, ...] = ("memory", "corpus", "stream")


@dataclasses.dataclass(frozen=True)
class Planted:
    """The noise planted in a training set, by id: `mismatched` bool (N,) captions that name
    another class (CLIP only), `duplicate_of` int64 (N,) the id an image copies, -1 if none.
    None where the source plants nothing of that kind (every corpus on disk)."""

    mismatched: np.ndarray | None = None
    duplicate_of: np.ndarray | None = None

    @property
    def any(self) -> bool:
        """True when the source planted something (the run then saves planted.npz)."""
        return self.mismatched is not None or self.duplicate_of is not None


def no_planted() -> Planted:
    """The Planted of a source with no planted noise."""
    return Planted()


@runtime_checkable
class TrainData(Protocol):
    """What a trainer asks of its training data (see the module docstring)."""

    batch_mode: BatchMode

    @property
    def num_samples(self) -> int:
        """N, the ids the pruner tracks; bad samples included (ids never shift)."""

    def epoch_stats(self, plan: Any) -> dict[str, int]:
        """The epoch's `skipped_samples` / `repeated_samples` for the metrics row; {} for a
        source that neither skips nor repeats."""

    def skipped_samples(self) -> dict[int, tuple[str, str]]:
        """{id: (path or shard key, reason)} of the samples skipped so far (skipped.jsonl)."""

    def planted(self) -> Planted:
        """The planted-noise labels, by id."""

    def probe_set(self) -> tuple[Any, Any] | None:
        """(images, labels) a linear probe fits on, or None when the source has no labels."""

    def disk_corpus(self) -> Any | None:
        """The `PathCorpus` behind the source (its file list is fingerprinted so a resume
        refuses a changed corpus), or None (Fashion-MNIST; a shard index checks itself)."""


def check_train_data(data: Any) -> None:
    """Raise TypeError naming what is missing when `data` does not implement TrainData."""
    missing = [name for name in ("batch_mode", "num_samples", "epoch_stats", "skipped_samples",
                                 "planted", "probe_set", "disk_corpus")
               if name not in dir(type(data)) and name not in vars(data)]
    if missing:
        raise TypeError(f"training data {type(data).__name__} does not implement TrainData "
                        f"(reference_trainers/common/data_layer.py): missing {missing}")
    if data.batch_mode not in BATCH_MODES:
        raise TypeError(f"{type(data).__name__}.batch_mode is {data.batch_mode!r}; expected "
                        f"one of {BATCH_MODES}")


class NothingPlanted:
    """TrainData's answers for a source on disk: no planted noise, no labels for a probe."""

    def planted(self) -> Planted:
        return no_planted()

    def probe_set(self) -> None:
        return None


class HeldInMemory:
    """TrainData's answers for a labelled split held in memory (`images`, `labels`, any array
    type): every id is served by `batch` / `crops`, none is skipped or repeated, the probe fits
    on the split itself and no file on disk can change under a resume. Subclasses add
    `planted()`."""

    images: Any
    labels: Any
    batch_mode: BatchMode = "memory"

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def epoch_stats(self, plan: Any) -> dict[str, int]:
        return {}

    def skipped_samples(self) -> dict[int, tuple[str, str]]:
        return {}

    def probe_set(self) -> tuple[Any, Any]:
        return self.images, self.labels

    def disk_corpus(self) -> None:
        return None
