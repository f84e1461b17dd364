"""The shard index a training run uses: kept in the run directory (or at `--shard-index PATH`),
so the dataset folder is only read, and checked against the shards every time the run starts
or resumes (shards.ShardIndex.open: a changed shard is a DataError naming it).

An index written beside a folder of shards by make_shards is reused (after the same check) and
copied into the run directory, so ids are those make_shards printed; without one the shards'
headers are scanned once.

`--train-num-samples N` is open_clip's count of training samples. Here the index counts them,
so N is checked, not trusted: it must equal the samples indexed or the good ones among them
(those with an image and, for CLIP, a non-empty caption); any other N is refused with both
counts, since an epoch of another length would not be the plan the pruner makes.
"""

from __future__ import annotations

import os
import pathlib

from reference_trainers.common.corpora.shard_sources import ShardList
from reference_trainers.common.corpora.shards import INDEX_NAME, ShardIndex
from reference_trainers.common.errors import DataError

__all__ = ["check_num_samples", "index_for_run", "index_path_for_run"]


def index_path_for_run(run_path: str | os.PathLike | None,
                       shard_index: str | os.PathLike | None) -> pathlib.Path | None:
    """--shard-index PATH if given, else RUN/scan-index.npz; None without a run directory
    (library use: the index sits beside a folder of shards)."""
    if shard_index:
        return pathlib.Path(shard_index)
    return None if run_path is None else pathlib.Path(run_path) / INDEX_NAME


def index_for_run(source: str, *, run_path: str | os.PathLike | None = None,
                  shard_index: str | os.PathLike | None = None,
                  train_num_samples: int | None = None, captions: bool = True) -> ShardIndex:
    """The checked ShardIndex of `source` (shard_sources: a folder or webdataset URLs) for a
    run in `run_path`; see the module docstring."""
    path = index_path_for_run(run_path, shard_index)
    if path is not None and not path.exists():
        shards = ShardList.resolve(source)
        if shards.folder is not None and (shards.folder / INDEX_NAME).exists():
            try:
                beside = ShardIndex.open(source)  # checked against the shards
            except DataError:
                beside = None  # stale: scan the shards into the run's own index instead
            if beside is not None:
                beside.path = path
                beside._write()
    index = ShardIndex.open(source, index_path=path)
    check_num_samples(index, train_num_samples, captions=captions)
    return index


def check_num_samples(index: ShardIndex, train_num_samples: int | None, *,
                      captions: bool = True) -> None:
    """Refuse a --train-num-samples that is neither the indexed nor the good sample count."""
    if train_num_samples is None:
        return
    total, good = len(index), int(index.good_for(captions).sum())
    if train_num_samples not in (total, good):
        raise DataError(f"--train-num-samples {train_num_samples} does not match the shards "
                        f"of {index.source.source!r}: their index ({index.path}) holds {total} "
                        f"samples, {good} of them good (image{' and caption' if captions else ''}"
                        f"); pass {good} (or {total}), or leave the flag out: the index counts "
                        "the samples itself")
