"""webdataset-style tar shards read as a pruned stream, without the webdataset package.

Layout: `*.tar` shards given as a source (shard_sources.py: a folder, a .tar, a brace pattern
'DIR/{00000..00331}.tar', a '::' list, pipe:COMMAND); a sample is consecutive members
`KEY.<image ext>` and `KEY.txt` (webdataset's convention: the key is the member path up to the
first "." of its file name; other members such as KEY.json are ignored).

Ids. `ShardIndex.open(source, index_path=)` scans the shards once (local files: tar headers
only, no member is read; a pipe: shard is streamed through) and gives every key a dense id in
the order (shard in the source's order, position in the shard), so ids are contiguous per shard.
It is stored at `index_path` (default: `scan-index.npz` beside a folder's shards; the trainers
keep it in the run directory, run_index.py) and reused while the shards keep their names and
sizes, so ids stay stable across runs; a changed shard is refused by name until the index is
rebuilt. A key that occurs twice is an error naming both shards.

Bad samples keep their id and are never served: a key without a .txt or without an image, or
with an empty .txt, is marked at index time (`index.skipped`); an image Pillow cannot decode is
found when it is read, left out and logged (`stream.stats.corrupt`). An image-only stream
(`captions=False`, the MoCo trainer's) needs only the image member: a key without a .txt is good
for it (`index.good_for(False)`), and no caption is read.

Splitting one epoch (`ShardStream`). The served ids are the plan's kept ids that are not marked
bad, in shard order (shards permuted by (seed, epoch) when shuffle=True), K of them. That list
is cut into G = world_size * num_workers contiguous runs of floor(K / G) or ceil(K / G) ids;
global worker g = rank * num_workers + worker_id reads run g, which spans one shard or a few,
seeking from kept member to kept member. So every served id is read by exactly one worker of
one rank, and a pruned sample's bytes are never read, let alone decoded (a pipe: shard cannot
seek: its pruned members stream past and are dropped before decode). Each worker then
yields exactly M = ceil(K / G) samples: a worker with a shorter run (or with corrupt images)
tops up with repeats of its own run's first ids, G * M - K repeats per epoch at most G - 1 plus
the corrupt count. Every rank therefore yields the same number of samples and, with a
DataLoader of batch_size B, the same number of batches: `steps_per_rank(plan, B)`.

>>> import tempfile
>>> index = ShardIndex.open(tempfile.mkdtemp())
>>> len(index)
0
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
from collections.abc import Iterator

import numpy as np

from reference_trainers.common.corpora.images import (BadSampleError, ImageSpec, Tokenize,
                                                     decode_image)
from reference_trainers.common.corpora.shard_sources import (IMAGE_EXTENSIONS, ShardList,  # noqa: F401
                                                             describe_change, is_streamed,
                                                             read_streamed, scan_shard)
from reference_trainers.common.data_layer import NothingPlanted
from reference_trainers.common.errors import DataError
from scan_core import EpochPlan

INDEX_NAME = "scan-index.npz"
INDEX_VERSION = 1
log = logging.getLogger(__name__)


class ShardIndex:
    """Keys -> dense ids for the tar shards of a source (shard_sources: a folder, webdataset
    URLs), with each member's byte range.

    Arrays, all of length N: keys (str), shard (int32, into shard_names), image_offset /
    image_size / text_offset / text_size (int64 bytes), image_ext (str), reasons (str, "" for
    a good sample). shard_starts (num_shards + 1,): ids of shard s are shard_starts[s] up to
    shard_starts[s + 1]. shard_urls: what each shard is opened as (a path or pipe:COMMAND);
    directory: the source folder, None for a URL source; path: the index file.
    """

    def __init__(self, shards: ShardList, shard_bytes: list[int], arrays: dict[str, np.ndarray],
                 path: pathlib.Path):
        self.source, self.path = shards, path
        self.directory, self.shard_names, self.shard_urls = shards.folder, shards.names, shards.urls
        self.shard_bytes = shard_bytes
        self.keys = arrays["keys"]
        self.shard = arrays["shard"]
        self.image_offset, self.image_size = arrays["image_offset"], arrays["image_size"]
        self.text_offset, self.text_size = arrays["text_offset"], arrays["text_size"]
        self.image_ext, self.reasons = arrays["image_ext"], arrays["reasons"]
        self.shard_starts = np.searchsorted(self.shard, np.arange(len(shards.names) + 1))
        self._key_to_id: dict[str, int] | None = None

    # -- building and loading --------------------------------------------------------------
    @staticmethod
    def _index_path(shards: ShardList, index_path: str | os.PathLike | None) -> pathlib.Path:
        if index_path is not None:
            return pathlib.Path(index_path)
        if shards.folder is None:
            raise DataError(f"shard source {shards.source!r} is a URL list: pass index_path= "
                            "(the trainers keep the index in the run directory, or in "
                            "--shard-index PATH)")
        return shards.folder / INDEX_NAME

    @classmethod
    def build(cls, source: str | os.PathLike, *,
              index_path: str | os.PathLike | None = None) -> "ShardIndex":
        """Scan every shard of `source` and write the index to `index_path` (default: beside
        the shards of a folder source)."""
        shards = ShardList.resolve(source)
        path = cls._index_path(shards, index_path)
        owner: dict[str, str] = {}
        samples: list[_Sample] = []
        shard_of: list[int] = []
        for s, (name, url) in enumerate(zip(shards.names, shards.urls)):
            for sample in scan_shard(url):
                if sample.key in owner:
                    raise DataError(f"key {sample.key!r} is in shard {owner[sample.key]} and in "
                                    f"shard {name}: keys must be unique across shards "
                                    "(rename one, or write the shards again with make_shards)")
                owner[sample.key] = name
                samples.append(sample)
                shard_of.append(s)
        arrays = {
            "keys": np.array([x.key for x in samples], dtype=str),
            "shard": np.array(shard_of, dtype=np.int32),
            "image_offset": np.array([x.image[0] if x.image else -1 for x in samples], np.int64),
            "image_size": np.array([x.image[1] if x.image else 0 for x in samples], np.int64),
            "image_ext": np.array([x.image[2] if x.image else "" for x in samples], dtype=str),
            "text_offset": np.array([x.text[0] if x.text else -1 for x in samples], np.int64),
            "text_size": np.array([x.text[1] if x.text else 0 for x in samples], np.int64),
            "reasons": np.array([x.reason for x in samples], dtype=str),
        }
        index = cls(shards, shards.sizes(), arrays, path)
        index._write()
        return index

    def _write(self) -> None:
        meta = {"version": INDEX_VERSION, "shards": self.shard_names, "bytes": self.shard_bytes}
        # a name of this process's own: ranks that build the same index at once do not collide
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp.npz")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, meta=np.array(json.dumps(meta)), keys=self.keys, shard=self.shard,
                     image_offset=self.image_offset, image_size=self.image_size,
                     image_ext=self.image_ext, text_offset=self.text_offset,
                     text_size=self.text_size, reasons=self.reasons)
            os.replace(tmp, self.path)
        except OSError as err:
            raise DataError(f"cannot write the shard index {self.path}: {err}; a read-only "
                            "dataset folder needs the index elsewhere: pass index_path= (the "
                            "trainers' --shard-index PATH; by default they use the run "
                            "directory)") from err

    @classmethod
    def open(cls, source: str | os.PathLike, *, index_path: str | os.PathLike | None = None,
             rebuild: bool = False) -> "ShardIndex":
        """The stored index at `index_path` if it matches the shards (names and sizes), else
        build it when there is none (or rebuild=True); a stale stored index is refused, naming
        the changed shard, since rebuilding it silently could change ids mid-run."""
        shards = ShardList.resolve(source)
        path = cls._index_path(shards, index_path)
        if rebuild or not path.exists():
            return cls.build(source, index_path=path)
        try:
            with np.load(path, allow_pickle=False) as stored:
                meta = json.loads(str(stored["meta"]))
                arrays = {name: stored[name] for name in stored.files if name != "meta"}
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"cannot read the shard index {path}: {err}; delete it to re-index "
                            "(and start the run afresh)") from err
        changed = describe_change(meta.get("shards", []), meta.get("bytes", []), shards)
        if meta.get("version") != INDEX_VERSION or changed:
            raise DataError(f"{path} was built for other shards than {shards.source!r} holds "
                            f"now: {changed or 'another index version'}; ids would change: "
                            "restore the shards, or delete the index (or pass rebuild=True) to "
                            "re-index and start the run afresh")
        return cls(shards, meta["bytes"], arrays, path)

    # -- lookups -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    @property
    def good(self) -> np.ndarray:
        """bool (N,): the sample has an image and a non-empty .txt."""
        return self.reasons == ""

    @property
    def skipped(self) -> dict[int, str]:
        """{id: reason} of the samples marked bad at index time."""
        return {int(i): str(self.reasons[i]) for i in np.flatnonzero(~self.good)}

    def good_for(self, captions: bool) -> np.ndarray:
        """bool (N,): `good` for image-text use; for image-only use (MoCo) every sample with
        an image member, with or without a .txt."""
        return self.good if captions else self.reasons != "no image member"

    def skipped_for(self, captions: bool) -> dict[int, str]:
        """{id: reason} of the samples bad at index time for that use (see `good_for`)."""
        return {int(i): str(self.reasons[i]) for i in np.flatnonzero(~self.good_for(captions))}

    def id_of(self, key: str) -> int | None:
        if self._key_to_id is None:
            self._key_to_id = {str(k): i for i, k in enumerate(self.keys.tolist())}
        return self._key_to_id.get(key)

    def read(self, handle, sample_id: int, *, with_text: bool = True) -> tuple[bytes, str]:
        """(image bytes, caption) of one sample from its open shard file; with_text=False
        reads the image only (caption "")."""
        handle.seek(int(self.image_offset[sample_id]))
        data = handle.read(int(self.image_size[sample_id]))
        if not with_text:
            return data, ""
        handle.seek(int(self.text_offset[sample_id]))
        text = handle.read(int(self.text_size[sample_id])).decode("utf-8", errors="replace")
        return data, text.strip()


@dataclasses.dataclass
class StreamStats:
    """Counts of this process's iteration: served samples, repeats (top-ups) among them,
    and {id: reason} of samples that failed at read / decode."""

    served: int = 0
    repeats: int = 0
    corrupt: dict[int, str] = dataclasses.field(default_factory=dict)
    refills: dict[int, int] = dataclasses.field(default_factory=dict)  # epoch -> repeats that
    # stood in for corrupt images (beyond the split's top-up)


class ShardStream(NothingPlanted):
    """One rank's pruned stream over a ShardIndex; call it per worker (a WorkerSource).

    Args: index; tokenizer texts -> int64 (n, L) (None with captions=False); spec the
      ImageSpec; captions: False for an image-only stream (MoCo): a sample needs only an
      image member, no caption is read and the tokens are int64 (0,); rank / world_size;
      num_workers the DataLoader's (0 or 1: one stream); seed; shuffle permutes shard order by
      (seed, epoch); shuffle_buffer: samples held per worker for a seeded shuffle (0 or 1: none).
    Yields (image uint8 (C, size, size), tokens int64 (L,), id int).
    """

    def __init__(self, index: ShardIndex, *, tokenizer: Tokenize | None, spec: ImageSpec,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 256, captions: bool = True):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} must lie in [0, world_size={world_size})")
        if captions and tokenizer is None:
            raise DataError("ShardStream(captions=True) needs a tokenizer; pass one, or "
                            "captions=False for an image-only stream")
        self.index, self.tokenizer, self.spec, self.captions = index, tokenizer, spec, captions
        self.rank, self.world_size = rank, world_size
        self.num_workers = max(1, num_workers)
        self.seed, self.shuffle, self.shuffle_buffer = seed, shuffle, shuffle_buffer
        self.stats = StreamStats()

    # -- TrainData (common/data_layer.py) --------------------------------------------------
    batch_mode = "stream"

    @property
    def num_samples(self) -> int:
        return len(self.index)

    def epoch_stats(self, plan: EpochPlan) -> dict[str, int]:
        """Bad samples (at index time for this use, and at decode on this process) and the
        epoch's repeats (top-ups and refills)."""
        return {"skipped_samples": len(self.index.skipped_for(self.captions))
                + len(self.stats.corrupt), "repeated_samples": self.repeated_samples(plan)}

    def skipped_samples(self) -> dict[int, tuple[str, str]]:
        found = {**self.index.skipped_for(self.captions), **self.stats.corrupt}
        return {int(i): (str(self.index.keys[i]), str(r)) for i, r in found.items()}

    def disk_corpus(self) -> None:
        return None  # the index refuses changed shards by itself

    # -- the split -------------------------------------------------------------------------
    @property
    def num_streams(self) -> int:
        """G = world_size * num_workers."""
        return self.world_size * self.num_workers

    def served_order(self, plan: EpochPlan) -> np.ndarray:
        """int64 (K,) kept, good ids in the epoch's shard order: what the G runs cut up."""
        if plan.num_samples != len(self.index):
            raise DataError(f"the plan covers {plan.num_samples} samples but the shard index "
                            f"holds {len(self.index)}: build the pruner with "
                            "num_samples=len(index)")
        starts = self.index.shard_starts
        order = (np.random.Generator(np.random.PCG64([self.seed, plan.epoch])).permutation(
            len(starts) - 1) if self.shuffle else np.arange(len(starts) - 1))
        ids = np.concatenate([np.arange(starts[s], starts[s + 1], dtype=np.int64)
                              for s in order] or [np.zeros(0, np.int64)])
        return ids[plan.keep_mask(ids) & self.index.good_for(self.captions)[ids]]

    def samples_per_worker(self, plan: EpochPlan) -> int:
        """M = ceil(K / G): what every worker of every rank yields."""
        return math.ceil(len(self.served_order(plan)) / self.num_streams)

    def steps_per_rank(self, plan: EpochPlan, batch_size: int, drop_last: bool = False) -> int:
        """Batches a DataLoader(batch_size, num_workers) yields on every rank this epoch."""
        per_worker = self.samples_per_worker(plan)
        batches = per_worker // batch_size if drop_last else math.ceil(per_worker / batch_size)
        return self.num_workers * batches

    def topup_count(self, plan: EpochPlan) -> int:
        """Repeats the split adds this epoch over all ranks (corrupt images add more)."""
        return self.samples_per_worker(plan) * self.num_streams - len(self.served_order(plan))

    def repeated_samples(self, plan: EpochPlan) -> int:
        """Repeats served in the plan's epoch: the split's top-ups over all ranks plus the
        refills for corrupt images this process met (other ranks count their own)."""
        return self.topup_count(plan) + self.stats.refills.get(plan.epoch, 0)

    # -- iteration -------------------------------------------------------------------------
    def __call__(self, plan: EpochPlan, worker_id: int, num_workers: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        if max(1, num_workers) != self.num_workers:
            raise DataError(f"ShardStream was split for {self.num_workers} worker(s), asked "
                            f"for worker {worker_id} of {num_workers}")
        return self.iter_worker(plan, worker_id)

    def iter_worker(self, plan: EpochPlan, worker_id: int = 0
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """This rank's worker `worker_id`: exactly samples_per_worker(plan) samples."""
        order = self.served_order(plan)
        total, streams = len(order), self.num_streams
        g = self.rank * self.num_workers + worker_id
        start = g * (total // streams) + min(g, total % streams)
        stop = start + total // streams + (g < total % streams)
        target = math.ceil(total / streams)
        rng = np.random.Generator(np.random.PCG64([self.seed, plan.epoch, g]))
        served, split_topups = 0, target - (stop - start)
        for sample_id, data, text in self._shuffled(self._read(order[start:stop]), rng):
            sample = self._decode(sample_id, data, text)
            if sample is not None:
                served += 1
                yield sample
        attempts = topups = 0
        while served < target:  # top up with repeats, from this run's first ids onwards
            if attempts >= total:
                raise DataError(f"no kept sample of {self.index.source.source} decodes: cannot "
                                f"fill worker {g}'s {target} samples")
            sample_id = int(order[(start + attempts) % total])
            attempts += 1
            for _, data, text in self._read(np.array([sample_id])):
                sample = self._decode(sample_id, data, text)
                if sample is not None:
                    served += 1
                    self.stats.repeats += 1
                    topups += 1
                    if topups > split_topups:  # beyond the split: stands in for a corrupt one
                        self.stats.refills[plan.epoch] = self.stats.refills.get(plan.epoch, 0) + 1
                    yield sample

    def _read(self, ids: np.ndarray) -> Iterator[tuple[int, bytes, str]]:
        """(id, image bytes, caption) of `ids` in order: local shards by seeking from kept
        member to kept member, a pipe: shard streamed (shard_sources.read_streamed)."""
        index, ids = self.index, ids.tolist()
        start = 0
        while start < len(ids):
            shard = int(index.shard[ids[start]])
            stop = start
            while stop < len(ids) and int(index.shard[ids[stop]]) == shard:
                stop += 1
            run, url = ids[start:stop], index.shard_urls[shard]
            if is_streamed(url):
                yield from read_streamed(index, shard, run, with_text=self.captions)
            else:
                with open(url, "rb") as handle:
                    for sample_id in run:
                        data, text = index.read(handle, sample_id, with_text=self.captions)
                        yield sample_id, data, text
            start = stop

    def _shuffled(self, items: Iterator, rng: np.random.Generator) -> Iterator:
        if self.shuffle_buffer <= 1:
            yield from items
            return
        buffer: list = []
        for item in items:
            buffer.append(item)
            if len(buffer) >= self.shuffle_buffer:
                j = int(rng.integers(len(buffer)))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def _decode(self, sample_id: int, data: bytes, text: str
                ) -> tuple[np.ndarray, np.ndarray, int] | None:
        try:
            if self.captions and not text:
                raise BadSampleError("empty caption")
            image = decode_image(data, self.spec)
        except BadSampleError as err:
            self.stats.corrupt[sample_id] = str(err)
            log.warning("skipping sample %d (key %s): %s", sample_id,
                        self.index.keys[sample_id], err)
            return None
        tokens = (np.asarray(self.tokenizer([text]), dtype=np.int64)[0] if self.captions
                  else np.zeros(0, dtype=np.int64))
        self.stats.served += 1
        return image, tokens, sample_id
