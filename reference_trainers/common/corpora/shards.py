"""webdataset-style tar shards read as a pruned stream, without the webdataset package.

Layout: a folder of `*.tar` shards; a sample is consecutive members `KEY.<image ext>` and
`KEY.txt` (webdataset's convention: the key is the member path up to the first "." of its file
name; other members such as KEY.json are ignored).

Ids. `ShardIndex.open(folder)` scans the shards once (tar headers only; no member is read) and
gives every key a dense id in the order (shard file name, position in the shard), so ids are
contiguous per shard. It is stored beside the shards as `scan-index.npz` and reused while the
shard files keep their names and sizes, so ids stay stable across runs; a changed shard set is
refused until the index is rebuilt. A key that occurs twice is an error naming both shards.

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
one rank, and a pruned sample's bytes are never read, let alone decoded. Each worker then
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
import re
import tarfile
from collections.abc import Iterator

import numpy as np

from reference_trainers.common.corpora.csv_corpus import (BadSampleError, ImageSpec, Tokenize,
                                                          decode_image)
from reference_trainers.common.data_layer import NothingPlanted
from reference_trainers.common.errors import DataError
from scan_core import EpochPlan

INDEX_NAME = "scan-index.npz"
INDEX_VERSION = 1
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
log = logging.getLogger(__name__)


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, lowercased extension) of a tar member name, None if it has no extension."""
    match = _KEY_EXT.match(name)
    return None if match is None else (match.group(1), match.group(2).lower())


@dataclasses.dataclass
class _Sample:
    key: str
    image: tuple[int, int, str] | None = None  # (data offset, size, extension)
    text: tuple[int, int] | None = None        # (data offset, size)


def _scan_shard(path: pathlib.Path) -> list[_Sample]:
    samples: list[_Sample] = []
    seen: set[str] = set()
    data_end = 0
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                data_end = max(data_end, member.offset_data + member.size)
                parts = split_member_name(member.name) if member.isfile() else None
                if parts is None:
                    continue
                key, ext = parts
                if not samples or samples[-1].key != key:
                    if key in seen:
                        raise DataError(f"key {key!r} occurs twice in shard {path}, not as "
                                        "consecutive members: rewrite the shard")
                    seen.add(key)
                    samples.append(_Sample(key))
                sample = samples[-1]
                if ext == "txt":
                    sample.text = (member.offset_data, member.size)
                elif ext in IMAGE_EXTENSIONS and sample.image is None:
                    sample.image = (member.offset_data, member.size, ext)
            members_end = tar.offset
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"cannot read shard {path} as an uncompressed tar: {err}; rewrite it "
                        "(make_shards) or remove it from the folder") from err
    _check_complete(path, data_end, members_end)
    return samples


def _check_complete(path: pathlib.Path, data_end: int, members_end: int) -> None:
    """Refuse a shard cut short: tarfile stops silently at a truncated header, so a shard
    truncated before it was first indexed lost its tail with no word (issue 15, item 16). A
    complete tar holds every member's data and then its end marker (two 512-byte blocks)."""
    size = path.stat().st_size
    if data_end > size or members_end + 1024 > size:
        raise DataError(f"shard {path} is truncated: {size} bytes, its members and end marker "
                        f"need at least {max(data_end, members_end + 1024)}; the samples after "
                        "the cut are lost. Rewrite the shard (make_shards) or remove it from "
                        "the folder (ids are given per shard in order: decide before training)")


def _reason(sample: _Sample) -> str:
    if sample.image is None:
        return "no image member"
    if sample.text is None:
        return "no .txt member"
    return "empty .txt" if sample.text[1] == 0 else ""


class ShardIndex:
    """Keys -> dense ids for a folder of tar shards, with each member's byte range.

    Arrays, all of length N: keys (str), shard (int32, into shard_names), image_offset /
    image_size / text_offset / text_size (int64 bytes), image_ext (str), reasons (str, "" for
    a good sample). shard_starts (num_shards + 1,): ids of shard s are shard_starts[s] up to
    shard_starts[s + 1].
    """

    def __init__(self, directory: pathlib.Path, shard_names: list[str], shard_bytes: list[int],
                 arrays: dict[str, np.ndarray]):
        self.directory, self.shard_names, self.shard_bytes = directory, shard_names, shard_bytes
        self.keys = arrays["keys"]
        self.shard = arrays["shard"]
        self.image_offset, self.image_size = arrays["image_offset"], arrays["image_size"]
        self.text_offset, self.text_size = arrays["text_offset"], arrays["text_size"]
        self.image_ext, self.reasons = arrays["image_ext"], arrays["reasons"]
        self.shard_starts = np.searchsorted(self.shard, np.arange(len(shard_names) + 1))
        self._key_to_id: dict[str, int] | None = None

    # -- building and loading --------------------------------------------------------------
    @staticmethod
    def _shard_files(directory: pathlib.Path) -> list[pathlib.Path]:
        if not directory.is_dir():
            raise DataError(f"shard folder {directory} does not exist")
        return sorted(directory.glob("*.tar"))

    @classmethod
    def build(cls, directory: str | os.PathLike) -> "ShardIndex":
        """Scan every `*.tar` in `directory` and write the index beside them."""
        directory = pathlib.Path(directory)
        files = cls._shard_files(directory)
        owner: dict[str, str] = {}
        samples: list[_Sample] = []
        shard_of: list[int] = []
        for s, path in enumerate(files):
            for sample in _scan_shard(path):
                if sample.key in owner:
                    raise DataError(f"key {sample.key!r} is in shard {owner[sample.key]} and in "
                                    f"shard {path.name}: keys must be unique across shards "
                                    "(rename one, or write the shards again with make_shards)")
                owner[sample.key] = path.name
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
            "reasons": np.array([_reason(x) for x in samples], dtype=str),
        }
        index = cls(directory, [p.name for p in files], [p.stat().st_size for p in files], arrays)
        index._write()
        return index

    def _write(self) -> None:
        meta = {"version": INDEX_VERSION, "shards": self.shard_names, "bytes": self.shard_bytes}
        tmp = self.directory / (INDEX_NAME + ".tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), keys=self.keys, shard=self.shard,
                 image_offset=self.image_offset, image_size=self.image_size,
                 image_ext=self.image_ext, text_offset=self.text_offset,
                 text_size=self.text_size, reasons=self.reasons)
        os.replace(tmp, self.directory / INDEX_NAME)

    @classmethod
    def open(cls, directory: str | os.PathLike, *, rebuild: bool = False) -> "ShardIndex":
        """The stored index if it matches the shards (names and sizes), else build it when
        there is none (or rebuild=True); a stale stored index is refused, since rebuilding it
        silently could change ids mid-run."""
        directory = pathlib.Path(directory)
        files = cls._shard_files(directory)
        path = directory / INDEX_NAME
        if rebuild or not path.exists():
            return cls.build(directory)
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            arrays = {name: stored[name] for name in stored.files if name != "meta"}
        current = ([p.name for p in files], [p.stat().st_size for p in files])
        if meta.get("version") != INDEX_VERSION or (meta["shards"], meta["bytes"]) != current:
            raise DataError(f"{path} was built for other shards ({len(meta['shards'])} files) "
                            f"than {directory} holds now ({len(files)} files, or changed "
                            "sizes); ids would change: delete the index or pass rebuild=True "
                            "to re-index, and start the run afresh")
        return cls(directory, meta["shards"], meta["bytes"], arrays)

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
                raise DataError(f"no kept sample of {self.index.directory} decodes: cannot "
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
        index, handle, open_shard = self.index, None, -1
        try:
            for sample_id in ids.tolist():
                shard = int(index.shard[sample_id])
                if shard != open_shard:
                    if handle is not None:
                        handle.close()
                    handle = open(index.directory / index.shard_names[shard], "rb")
                    open_shard = shard
                data, text = index.read(handle, sample_id, with_text=self.captions)
                yield sample_id, data, text
        finally:
            if handle is not None:
                handle.close()

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
