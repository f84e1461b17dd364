"""`--workers N`: decode a corpus's images in N DataLoader worker processes, augment in the
trainer's process, so the same seed trains on the same pixels whatever N is.

Why the split lies there: augmentation draws from the trainer's `torch.Generator`, which the
checkpoint saves and resume restores (exact resume). Drawing it in workers would tie the draws
to the worker count and lose them at a resume. Decoding (file read, Pillow decode, resize) is
the costly, deterministic part, so the workers do that and hand back uint8 pixels.

* A map-style corpus (`csv:`, and any `PathCorpus`): the sampler's id batches are decoded one
  batch per worker task, in order; with any N the batches, their ids and (after the augment in
  this process) their pixels equal those of N = 0. Samples a worker finds undecodable travel
  back with the batch and join `corpus.skipped` here, as N = 0 would have recorded them.
* MoCo's corpora (`folder:`, `csv:`, `shards:`) take the decoded pixels
  (`raw_corpus_batches`, `raw_stream_batches`) and draw their two crops here.
* A shard stream (`shards:`): the stream itself is split over ranks x workers
  (corpora/shards.py), so the order in which samples arrive depends on N: an epoch is
  deterministic per (seed, N) and serves the same kept ids, each once, for every N, but the
  batches differ from N = 0. Corrupt images and their refills met in a worker travel back with
  the next sample and join `stream.stats` here.

N = 0 runs the same code in this process (a DataLoader with no workers). Workers start afresh
each epoch (no persistent workers), so each epoch's workers see that epoch's plan.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from reference_trainers.common.errors import TrainerError

__all__ = ["check_workers", "corpus_batches", "raw_corpus_batches", "raw_stream_batches",
           "stream_batches"]


def check_workers(workers: int | None) -> int:
    """`workers` when it is a count of DataLoader worker processes (>= 0; None means 0),
    else TrainerError."""
    if workers is None:
        return 0
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise TrainerError(f"--workers {workers!r}: expected an integer >= 0 (0 decodes in the "
                           "trainer's process; N > 0 starts N DataLoader worker processes)")
    return workers


class _DecodedBatches(Dataset):
    """Item k: the k-th id batch of the epoch decoded, as (pixels uint8 (B', C, H, W), tokens
    int64 (B', L), served ids int64 (B'), {id: reason} newly skipped, repeats added)."""

    def __init__(self, corpus: Any, id_batches: Sequence[np.ndarray], fill_bad: bool = False):
        self.corpus, self.id_batches, self.fill_bad = corpus, id_batches, fill_bad

    def __len__(self) -> int:
        return len(self.id_batches)

    def __getitem__(self, k: int):
        corpus = self.corpus
        known, repeats = set(corpus.skipped), corpus.repeats
        pixels, served = corpus.raw_batch(self.id_batches[k], fill_bad=self.fill_bad)
        if corpus.captions is None or corpus.tokenizer is None:
            tokens = torch.zeros((len(served), 0), dtype=torch.long)
        else:
            texts = [corpus.captions[i] for i in served.tolist()] or ["x"]
            tokens = torch.from_numpy(np.asarray(corpus.tokenizer(texts), dtype=np.int64))
            tokens = tokens[:len(served)]
        new = {i: r for i, r in corpus.skipped.items() if i not in known}
        return pixels, tokens, served, new, corpus.repeats - repeats


def raw_corpus_batches(corpus: Any, id_batches: Sequence[np.ndarray], *, workers: int | None,
                       fill_bad: bool = False
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The epoch's id batches of a map-style corpus decoded in `workers` processes, as
    (pixels uint8 (B', C, H, W), tokens int64 (B', L), served ids int64 (B')): what
    `corpus.raw_batch(ids, fill_bad=fill_bad)` gives (and tokens), for every N. What the
    workers skip or repeat is recorded in `corpus` here."""
    workers = check_workers(workers)
    loader = DataLoader(_DecodedBatches(corpus, list(id_batches), fill_bad), batch_size=None,
                        shuffle=False, num_workers=workers)
    for pixels, tokens, served, new, repeats in loader:
        if workers:  # the worker's copy of the corpus recorded them, not this one
            corpus.skipped.update(new)
            corpus.repeats += repeats
        yield pixels, tokens, served


def corpus_batches(corpus: Any, id_batches: Sequence[np.ndarray], *, workers: int | None,
                   generator: torch.Generator | None, augment: bool = True
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The epoch's batches of a map-style corpus, (images float32 normalised and augmented,
    tokens int64, ids int64), decoded in `workers` processes; equal to
    `corpus.batch(ids, augment=augment, generator=generator)` per id batch, for every N."""
    for pixels, tokens, served in raw_corpus_batches(corpus, id_batches, workers=workers):
        yield corpus.spec.prepare(pixels, augment=augment, generator=generator), tokens, served


class _StatsCarrying:
    """A WorkerSource over a ShardStream whose samples carry the corrupt images and refills
    the worker met since its previous sample (empty in the trainer's own process, where the
    stream counts them itself)."""

    def __init__(self, stream: Any):
        self.stream = stream

    def __call__(self, plan: Any, worker_id: int, num_workers: int):
        stream, in_worker = self.stream, get_worker_info() is not None
        seen, refills = set(stream.stats.corrupt), stream.stats.refills.get(plan.epoch, 0)
        for sample in stream(plan, worker_id, num_workers):
            new, added = {}, 0
            if in_worker:
                new = {i: r for i, r in stream.stats.corrupt.items() if i not in seen}
                seen.update(new)
                now = stream.stats.refills.get(plan.epoch, 0)
                added, refills = now - refills, now
            yield (*sample, new, added)


def _collate_with_stats(samples: list) -> tuple:
    from adapters.torch.stream import collate_samples

    batch = collate_samples([s[:3] for s in samples])
    corrupt: dict[int, str] = {}
    for s in samples:
        corrupt.update(s[3])
    return (*batch, corrupt, sum(s[4] for s in samples))


def raw_stream_batches(stream: Any, plan: Any, *, batch_size: int, workers: int
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """This rank's batches of a shard stream split for `workers` DataLoader workers
    (stream.num_workers must equal max(1, workers)), as read: (pixels uint8 (B, C, S, S),
    tokens, ids); `stream.steps_per_rank(plan, batch_size)` of them. What the workers found
    corrupt or refilled is recorded in `stream.stats` here."""
    from adapters.torch.stream import PlanIterableDataset

    workers = check_workers(workers)
    dataset = PlanIterableDataset(_StatsCarrying(stream), num_workers=workers)
    dataset.set_plan(plan)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate_with_stats)
    for images, tokens, ids, corrupt, refills in loader:
        stream.stats.corrupt.update(corrupt)
        if refills:
            stream.stats.refills[plan.epoch] = stream.stats.refills.get(plan.epoch, 0) + refills
        yield images, tokens, ids


def stream_batches(stream: Any, plan: Any, *, batch_size: int, workers: int,
                   generator: torch.Generator | None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """raw_stream_batches augmented in this process: (images float32, tokens, ids)."""
    for images, tokens, ids in raw_stream_batches(stream, plan, batch_size=batch_size,
                                                  workers=workers):
        yield stream.spec.prepare(images, augment=True, generator=generator), tokens, ids
