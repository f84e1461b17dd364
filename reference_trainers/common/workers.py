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

N = 0 runs the same code in this process (a DataLoader with no workers). A trainer holds one
`DecodeWorkers` for the run: its DataLoaders keep their N worker processes from epoch to epoch
(`persistent_workers`), so a short, pruned epoch does not pay for starting them again. Each
epoch still reaches them: a map-style corpus's id batches come from a sampler the trainer's
process iterates, a stream's plan through shared memory (PlanIterableDataset(persistent=True)).
The functions below are the one-epoch faces (workers started for that epoch alone).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from reference_trainers.common.corpora.decode_pool import check_worker_count

__all__ = ["DecodeWorkers", "corpus_batches", "raw_corpus_batches",
           "raw_stream_batches", "stream_batches"]


class _DecodedBatches(Dataset):
    """Item (ids, known): an id batch the sampler hands out, with what the trainer's process
    already knows is bad among them (a persistent worker's copy of the corpus does not hear of
    what other workers found), decoded as (pixels uint8 (B', C, H, W), tokens int64 (B', L),
    served ids int64 (B'), {id: reason} newly skipped, repeats added)."""

    def __init__(self, corpus: Any, fill_bad: bool = False):
        self.corpus, self.fill_bad = corpus, fill_bad

    def __getitem__(self, item: tuple[np.ndarray, dict[int, str]]):
        ids, known_bad = item
        corpus = self.corpus
        corpus.skipped.update(known_bad)
        known, repeats = set(corpus.skipped), corpus.repeats
        pixels, served = corpus.raw_batch(ids, fill_bad=self.fill_bad)
        if corpus.captions is None or corpus.tokenizer is None:
            tokens = torch.zeros((len(served), 0), dtype=torch.long)
        else:
            texts = [corpus.captions[i] for i in served.tolist()] or ["x"]
            tokens = torch.from_numpy(np.asarray(corpus.tokenizer(texts), dtype=np.int64))
            tokens = tokens[:len(served)]
        new = {i: r for i, r in corpus.skipped.items() if i not in known}
        return pixels, tokens, served, new, corpus.repeats - repeats


class _EpochIdBatches:
    """The DataLoader's sampler: this epoch's id batches, set by the trainer's process before
    it iterates the loader (the sampler runs there, so persistent workers need no message),
    each with the bad ids among them the trainer's corpus knows of."""

    def __init__(self, corpus: Any) -> None:
        self.corpus = corpus
        self.id_batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[tuple[np.ndarray, dict[int, str]]]:
        skipped = self.corpus.skipped
        for ids in self.id_batches:
            yield ids, {i: skipped[i] for i in np.asarray(ids).tolist() if i in skipped}

    def __len__(self) -> int:
        return len(self.id_batches)


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


class DecodeWorkers:
    """The run's `--workers` decoding processes: DataLoaders built on first use and kept, with
    their workers, for the whole run (module docstring). `close()` stops the workers.

    Args: workers: N >= 0 (corpora/decode_pool.check_worker_count)."""

    def __init__(self, workers: int | None) -> None:
        self.workers = check_worker_count(workers)
        self._corpus: tuple[Any, bool, DataLoader, _EpochIdBatches] | None = None
        self._stream: tuple[Any, int, DataLoader, Any] | None = None

    def _loader_options(self) -> dict[str, Any]:
        return {"num_workers": self.workers, "persistent_workers": self.workers > 0}

    def raw_corpus_batches(self, corpus: Any, id_batches: Sequence[np.ndarray], *,
                           fill_bad: bool = False
                           ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The epoch's id batches of a map-style corpus decoded in the workers, as (pixels
        uint8 (B', C, H, W), tokens int64 (B', L), served ids int64 (B')): what
        `corpus.raw_batch(ids, fill_bad=fill_bad)` gives (and tokens), for every N. What the
        workers skip or repeat is recorded in `corpus` here."""
        if self._corpus is None or self._corpus[0] is not corpus or self._corpus[1] != fill_bad:
            sampler = _EpochIdBatches(corpus)
            loader = DataLoader(_DecodedBatches(corpus, fill_bad), batch_size=None,
                                sampler=sampler, **self._loader_options())
            self._corpus = (corpus, fill_bad, loader, sampler)
        _, _, loader, sampler = self._corpus
        sampler.id_batches = list(id_batches)
        for pixels, tokens, served, new, repeats in loader:
            if self.workers:  # the worker's copy of the corpus recorded them, not this one
                corpus.skipped.update(new)
                corpus.repeats += repeats
            yield pixels, tokens, served

    def raw_stream_batches(self, stream: Any, plan: Any, *, batch_size: int
                           ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This rank's batches of a shard stream split for the workers (stream.num_workers
        must equal max(1, N)), as read: (pixels uint8 (B, C, S, S), tokens, ids);
        `stream.steps_per_rank(plan, batch_size)` of them. What the workers found corrupt or
        refilled is recorded in `stream.stats` here."""
        from adapters.torch.stream import PlanIterableDataset

        if self._stream is None or self._stream[0] is not stream or \
                self._stream[1] != batch_size:
            dataset = PlanIterableDataset(_StatsCarrying(stream), num_workers=self.workers,
                                          persistent=self.workers > 0)
            loader = DataLoader(dataset, batch_size=batch_size, collate_fn=_collate_with_stats,
                                **self._loader_options())
            self._stream = (stream, batch_size, loader, dataset)
        _, _, loader, dataset = self._stream
        dataset.set_plan(plan)
        for images, tokens, ids, corrupt, refills in loader:
            stream.stats.corrupt.update(corrupt)
            if refills:
                stream.stats.refills[plan.epoch] = stream.stats.refills.get(plan.epoch, 0) + \
                    refills
            yield images, tokens, ids

    def close(self) -> None:
        """Stop the worker processes (dropping the loaders shuts their workers down)."""
        self._corpus = self._stream = None

    def __enter__(self) -> "DecodeWorkers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def raw_corpus_batches(corpus: Any, id_batches: Sequence[np.ndarray], *, workers: int | None,
                       fill_bad: bool = False, decode: DecodeWorkers | None = None
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """DecodeWorkers.raw_corpus_batches from the run's `decode` workers, else from workers
    started for this epoch alone."""
    decode = decode if decode is not None else DecodeWorkers(workers)
    yield from decode.raw_corpus_batches(corpus, id_batches, fill_bad=fill_bad)


def corpus_batches(corpus: Any, id_batches: Sequence[np.ndarray], *, workers: int | None,
                   generator: torch.Generator | None, augment: bool = True,
                   decode: DecodeWorkers | None = None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The epoch's batches of a map-style corpus, (images float32 normalised and augmented,
    tokens int64, ids int64), decoded in `workers` processes (the run's `decode`, else
    started for this epoch); equal to `corpus.batch(ids, augment=augment,
    generator=generator)` per id batch, for every N."""
    for pixels, tokens, served in raw_corpus_batches(corpus, id_batches, workers=workers,
                                                     decode=decode):
        yield corpus.spec.prepare(pixels, augment=augment, generator=generator), tokens, served


def raw_stream_batches(stream: Any, plan: Any, *, batch_size: int, workers: int,
                       decode: DecodeWorkers | None = None
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """DecodeWorkers.raw_stream_batches from the run's `decode` workers, else from workers
    started for this epoch alone."""
    decode = decode if decode is not None else DecodeWorkers(workers)
    yield from decode.raw_stream_batches(stream, plan, batch_size=batch_size)


def stream_batches(stream: Any, plan: Any, *, batch_size: int, workers: int,
                   generator: torch.Generator | None, decode: DecodeWorkers | None = None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """raw_stream_batches augmented in this process: (images float32, tokens, ids)."""
    for images, tokens, ids in raw_stream_batches(stream, plan, batch_size=batch_size,
                                                  workers=workers, decode=decode):
        yield stream.spec.prepare(images, augment=True, generator=generator), tokens, ids
