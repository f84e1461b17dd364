"""`--workers N` for the JAX CLIP trainer: a corpus's images decoded ahead in N worker
processes, torch-free (concurrent.futures, no DataLoader), augmented in the trainer's process.

    decoder = BatchDecoder(data, workers=2)      # data: corpora/arrays.CorpusArrays
    with decoder:                                # the pool lives for the whole run
        for epoch ...:
            id_batches = sampler.batches(batch_size)
            decoder.start_epoch(id_batches)      # up to 2 N batches decoded ahead
            for ids in id_batches:
                served, pixels = decoder.serve(ids)   # the batch of `ids`, in order

Why it gives what N = 0 gives: a task is one id batch and runs arrays.serve_batch, the pure
function N = 0 runs, with the ImageLoader (a picklable reader + ImageSpec) each worker got once
at start and the batch's ids that this process already knows are bad; the result comes back
in the epoch's order and `CorpusArrays.absorb` records its skipped ids and repeats here, as
N = 0 records them. A task sent ahead does not know what the batches just before it found bad,
but an epoch's plan names each id once, so no id found bad earlier in the epoch is in it;
across epochs every finding is known. Augmentation draws stay in the trainer's process (its
generator is checkpointed), so batches, losses, plans and resume equal N = 0's. Pruned
samples are never read: a worker reads only the ids of the batches it is given.

The workers are started with the "spawn" method (forking a process after JAX has started its
threads is unsafe) and import only numpy, Pillow and this package. A worker that raises is a
DataError naming the sample; a worker that dies (killed for memory, a crash in a decoder) is a
DataError naming the samples the workers were decoding at that moment: never a hang.
"""

from __future__ import annotations

import collections
import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from reference_trainers.common.corpora.arrays import ImageLoader, ServedBatch, serve_batch
from reference_trainers.common.corpora.images import BadSampleError
from reference_trainers.common.errors import DataError, TrainerError

__all__ = ["AHEAD_PER_WORKER", "BatchDecoder", "check_worker_count"]

AHEAD_PER_WORKER = 2  # batches in flight per worker (the DataLoader's prefetch_factor)
_IDLE = -1  # a worker's slot when it decodes nothing

_loader: ImageLoader | None = None  # in a worker: set once by _start_worker
_slot: Any = None  # in a worker: (shared array of the sample each worker decodes, its index)


def check_worker_count(workers: int | None) -> int:
    """`workers` when it is a count of decode processes (>= 0; None means 0), else
    TrainerError: the one check of --workers for every trainer, torch and JAX (no torch here)."""
    if workers is None:
        return 0
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise TrainerError(f"--workers {workers!r}: expected an integer >= 0 (0 decodes in the "
                           "trainer's process; N > 0 starts N decode worker processes)")
    return workers


def _start_worker(loader: ImageLoader, decoding: Any, counter: Any) -> None:
    global _loader, _slot
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _loader, _slot = loader, (decoding, index)


class _Watched:
    """The worker's loader, noting the sample it decodes in the shared array (so a death can
    be traced to it) and turning any error but a bad sample into a DataError naming it."""

    def __init__(self, loader: ImageLoader):
        self.loader = loader

    def __call__(self, i: int) -> np.ndarray:
        decoding, index = _slot
        decoding[index] = i
        try:
            return self.loader(i)
        except BadSampleError:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised typed, naming the sample
            raise DataError(f"a --workers process failed decoding sample "
                            f"{self.loader.where(i)}: {type(err).__name__}: {err}") from None
        finally:
            decoding[index] = _IDLE


def _decode(ids: np.ndarray, known_bad: dict[int, str], source: str) -> ServedBatch:
    """A worker's task: arrays.serve_batch of one id batch."""
    return serve_batch(ids, _Watched(_loader), known_bad, source)


class BatchDecoder:
    """The epoch's batches of `data` (a CorpusArrays) decoded in `workers` processes, or in
    this process when workers is 0; see the module docstring. Use it as a context manager
    (or call close()) so the pool stops with the run."""

    def __init__(self, data: Any, workers: int | None):
        self.data, self.workers = data, check_worker_count(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._batches: Iterator[ServedBatch] | None = None
        self._pending: collections.deque[tuple[np.ndarray, Future]] = collections.deque()
        if self.workers:
            context = multiprocessing.get_context("spawn")
            self._decoding = context.Array("q", [_IDLE] * self.workers)
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_start_worker,
                initargs=(data.loader, self._decoding, context.Value("i", 0)))

    def describe(self) -> str:
        """The line a run prints: where the images are decoded."""
        where = (f"in {self.workers} worker process{'es' if self.workers > 1 else ''}"
                 if self.workers else "in the trainer's process")
        return f"--workers {self.workers}: {self.data.source} decoded {where}"

    def start_epoch(self, id_batches: Sequence[np.ndarray]) -> None:
        """Begin decoding the epoch's `id_batches` ahead (nothing with workers = 0)."""
        if self._pool is not None:
            self._drop_pending()
            self._batches = self._ahead([self.data.check_ids(ids) for ids in id_batches])

    def serve(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(served ids (B,), pixels uint8 (B, C, H, W)) of the epoch's next batch, which must
        be `ids`; the batch's findings recorded in `data`."""
        if self._pool is None:
            return self.data.serve(ids)
        batch = next(self._batches, None) if self._batches is not None else None
        if batch is None or not np.array_equal(batch.requested, ids):
            raise TrainerError(f"BatchDecoder.serve({np.asarray(ids)[:5].tolist()}...): not the "
                               "epoch's next batch; call start_epoch with the epoch's id "
                               "batches and serve them in order")
        return self.data.absorb(batch)

    def _ahead(self, id_batches: list[np.ndarray]) -> Iterator[ServedBatch]:
        pending = self._pending  # (ids, future) in the epoch's order; close() cancels them
        upcoming = iter(id_batches)
        for ids in upcoming:
            pending.append((ids, self._submit(ids)))
            if len(pending) == AHEAD_PER_WORKER * self.workers:
                break
        while pending:
            ids, future = pending[0]
            try:
                batch = future.result()
            except BrokenProcessPool as err:
                raise self._died(ids) from err
            pending.popleft()
            following = next(upcoming, None)
            if following is not None:
                pending.append((following, self._submit(following)))
            yield batch

    def _submit(self, ids: np.ndarray) -> Future:
        skipped = self.data.skipped
        known = {i: skipped[i] for i in ids.tolist() if i in skipped}
        try:
            return self._pool.submit(_decode, ids, known, self.data.source)
        except BrokenProcessPool as err:
            raise self._died(ids) from err

    def _died(self, ids: np.ndarray) -> DataError:
        loader = self.data.loader
        busy = [int(i) for i in self._decoding[:] if i != _IDLE]
        named = ", ".join(loader.where(i) for i in busy) or (
            "no sample: it died starting (a script that starts a run needs the `if __name__ == "
            "'__main__':` guard, as spawned processes import it) or between samples; the batch "
            "waited for holds " + ", ".join(loader.where(int(i)) for i in np.asarray(ids)[:4])
            + " ...")
        return DataError(f"a --workers process decoding {self.data.source} died (killed for "
                         f"memory, or a crash in the image decoder) while decoding {named}. "
                         "Rerun with --workers 0 to decode in the trainer's process and see "
                         "the error, or remove that sample")

    def _drop_pending(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pending, self._batches = collections.deque(), None

    def close(self) -> None:
        """Stop the workers (cancelling what they have not started)."""
        if self._pool is not None:
            self._drop_pending()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "BatchDecoder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
