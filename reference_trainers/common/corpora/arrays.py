"""A CSV corpus or local tar shards as numpy arrays for the JAX CLIP trainer (no torch).

The JAX trainer reads its data by id, as it reads Fashion-MNIST: `data.images[ids]` and
`data.tokens[ids]` (jax/clip.batch_maker). `CorpusArrays` answers the same way:

* `tokens` (N, L) int64: every caption tokenised once when the data is built (captions are
  small: a CSV holds them; shards give them by a seek to each sample's .txt member, never
  reading an image); a bad sample's row is the empty caption's.
* `images[ids]` uint8 (B, C, size, size): decoded when the batch is made, so a pruned sample's
  image is never read nor decoded (the sampler never asks for it). A bad id (found at load,
  or an image that fails to decode now) is served as a repeat of a good id of the same batch,
  so every process keeps the batch size; `served_ids(ids)` names the ids the batch then holds
  (the JAX loop records those), and `skipped` and `repeats` count them, as the torch corpora's
  `fill_bad=True` does.

Shards are read by seeking, so they must be local files: a `pipe:` source is refused here (the
torch trainer streams it). Implements common/data_layer.TrainData (batch_mode "corpus").

What reads and decodes one image (`ImageLoader`, over a `FileReader` or a `ShardReader`) is a
small picklable object, and serving one batch (`serve_batch`) a pure function of the ids, that
loader and the bad ids known so far: `--workers N` (corpora/decode_pool.py) runs the same
function in N processes and hands its `ServedBatch` back to `absorb`, so a batch, its served
ids and what it skips are those of N = 0.

>>> import pathlib, tempfile
>>> from reference_trainers.common.corpora.images import ImageSpec
>>> from reference_trainers.common.tokenizer import Tokenizer
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "pairs.csv").write_text("image,caption\\nnone.png,a bag.\\n")
>>> data = CorpusArrays.from_csv(folder / "pairs.csv", spec=ImageSpec.cpu(),
...                              tokenizer=Tokenizer(context_length=8))
>>> data.num_samples, data.skipped, data.tokens.shape
(1, {0: 'missing file none.png'}, (1, 8))
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from reference_trainers.common.corpora.images import BadSampleError, ImageSpec, decode_image, \
    read_pairs
from reference_trainers.common.corpora.shard_sources import is_streamed
from reference_trainers.common.data_layer import NothingPlanted
from reference_trainers.common.errors import DataError

__all__ = ["CorpusArrays", "FileReader", "ImageLoader", "ServedBatch", "ShardReader",
           "serve_batch"]


class FileReader:
    """id -> the bytes of file `paths[id]` (under `root` when given): a CSV's image column, an
    image folder tree. Picklable, so a --workers process can hold it."""

    def __init__(self, paths: Sequence[str], root: str | os.PathLike | None = None):
        self.paths, self.root = list(paths), None if root is None else os.fspath(root)

    def path(self, i: int) -> str:
        return self.paths[i] if self.root is None else os.path.join(self.root, self.paths[i])

    def __call__(self, i: int) -> bytes:
        with open(self.path(i), "rb") as handle:
            return handle.read()

    def where(self, i: int) -> str:
        return self.path(i)


class ShardReader:
    """id -> the bytes of its image member, read by a seek into its local .tar shard (a
    ShardIndex's offsets; nothing else of the shard is read). Picklable."""

    def __init__(self, index: Any):
        self.urls = list(index.shard_urls)
        self.shard = np.asarray(index.shard)
        self.offset, self.size = np.asarray(index.image_offset), np.asarray(index.image_size)

    def __call__(self, i: int) -> bytes:
        with open(self.urls[int(self.shard[i])], "rb") as handle:
            handle.seek(int(self.offset[i]))
            return handle.read(int(self.size[i]))

    def where(self, i: int) -> str:
        return f"shard {self.urls[int(self.shard[i])]} at byte {int(self.offset[i])}"


class ImageLoader:
    """id -> uint8 (C, size, size): `read` then decode per `spec`; BadSampleError (naming the
    sample) when it cannot be served. All a --workers process needs of a corpus."""

    def __init__(self, read: Callable[[int], bytes], names: Sequence[str], spec: ImageSpec):
        self.read, self.names, self.spec = read, names, spec

    def __call__(self, i: int) -> np.ndarray:
        try:
            data = self.read(i)
        except OSError as err:
            raise BadSampleError(f"cannot read {self.names[i]}: {err}") from err
        return decode_image(data, self.spec)

    def where(self, i: int) -> str:
        """Sample i for a message: its name, and its file or shard when the reader knows."""
        name, where = str(self.names[i]), getattr(self.read, "where", None)
        place = where(i) if where is not None else name
        return name if place in (name, os.path.abspath(name)) else f"{name} ({place})"


@dataclasses.dataclass
class ServedBatch:
    """One id batch served: requested (B,) the sampler's ids; served int64 (B,) with each bad
    id replaced by a good id of the batch; pixels uint8 (B, C, size, size); new_skipped
    {id: reason} bad ids found while serving it; repeats: slots served as repeats."""

    requested: np.ndarray
    served: np.ndarray
    pixels: np.ndarray
    new_skipped: dict[int, str]
    repeats: int


def serve_batch(ids: np.ndarray, load: Callable[[int], np.ndarray], known_bad: Mapping[int, str],
                source: str) -> ServedBatch:
    """Decode `ids` with `load`, skipping those in `known_bad` and recording those that fail;
    each bad slot holds the next good image of the batch, in turn. DataError when no id of the
    batch can be served. Pure given `load`: the same in the trainer's process and a worker's.
    `ids` are checked by the caller (CorpusArrays.check_ids)."""
    ids = np.atleast_1d(np.asarray(ids))
    new: dict[int, str] = {}
    images: list[np.ndarray | None] = []
    for i in ids.tolist():
        image = None
        if i not in known_bad:
            try:
                image = load(i)
            except BadSampleError as err:
                new[i] = f"decode: {err}"
        images.append(image)
    good = [im for im in images if im is not None]
    if not good:
        first = int(ids[0]) if len(ids) else None
        raise DataError(f"no image of a batch of {len(ids)} from {source} could be served "
                        f"(ids {ids[:5].tolist()}...: {new.get(first, known_bad.get(first))})")
    good_ids = [i for i, im in zip(ids.tolist(), images) if im is not None]
    served = ids.copy()
    bad_slots = [k for k, im in enumerate(images) if im is None]
    for j, k in enumerate(bad_slots):
        images[k], served[k] = good[j % len(good)], good_ids[j % len(good)]
    return ServedBatch(ids, served, np.stack(images), new, len(bad_slots))


class _LazyImages:
    """`images[ids]` of a CorpusArrays: decoded on demand (see the module docstring)."""

    def __init__(self, owner: "CorpusArrays"):
        self.owner = owner

    def __len__(self) -> int:
        return self.owner.num_samples

    def __getitem__(self, ids) -> np.ndarray:
        return self.owner.decode_batch(np.atleast_1d(np.asarray(ids)))


class CorpusArrays(NothingPlanted):
    """Training pairs on disk served as numpy batches by id (module docstring).

    Args: names (N,) what to call each sample in messages (path or key); captions (N,) str;
      read (id -> encoded image bytes); skipped {id: reason} bad at load; spec; tokenizer
      (load_tokenizer's: encode(texts) -> int64 (n, L)); source (for messages).
    """

    batch_mode = "corpus"
    labels = None  # no class labels: no linear probe on a corpus

    def __init__(self, names: list[str], captions: list[str], read: Callable[[int], bytes],
                 skipped: dict[int, str], *, spec: ImageSpec, tokenizer: Any, source: str):
        self.names, self.spec, self.source = names, spec, source
        self.loader = ImageLoader(read, names, spec)  # what a --workers process holds
        self.skipped = dict(skipped)
        self.repeats = 0
        self.tokens = np.asarray(tokenizer.encode([c if i not in skipped else ""
                                                   for i, c in enumerate(captions)]),
                                 dtype=np.int64)
        self.images = _LazyImages(self)

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def from_csv(cls, path: str | os.PathLike, *, spec: ImageSpec, tokenizer: Any,
                 image_column: str = "image", caption_column: str = "caption"
                 ) -> "CorpusArrays":
        paths, captions, skipped = read_pairs(path, image_column=image_column,
                                              caption_column=caption_column)
        return cls(paths, captions or [], FileReader(paths), skipped, spec=spec,
                   tokenizer=tokenizer, source=os.fspath(path))

    @classmethod
    def from_shards(cls, index: Any, *, spec: ImageSpec, tokenizer: Any) -> "CorpusArrays":
        """From a shards.ShardIndex of local .tar files (captions read by seeking)."""
        streamed = [u for u in index.shard_urls if is_streamed(u)]
        if streamed:
            raise DataError(f"the JAX trainer reads shards by id, and {streamed[0]} is a pipe: "
                            "command that cannot seek: copy the shards to a local folder, or "
                            "train with --framework torch (which streams pipe: shards)")
        good = index.good_for(True)
        captions = [""] * len(index)
        for shard, url in enumerate(index.shard_urls):
            ids = np.arange(index.shard_starts[shard], index.shard_starts[shard + 1])
            with open(url, "rb") as handle:
                for i in ids[good[ids]].tolist():
                    handle.seek(int(index.text_offset[i]))
                    raw = handle.read(int(index.text_size[i]))
                    captions[i] = raw.decode("utf-8", errors="replace").strip()
        skipped = index.skipped_for(True)
        skipped.update({i: "empty .txt" for i, c in enumerate(captions) if good[i] and not c})
        return cls([str(k) for k in index.keys.tolist()], captions, ShardReader(index), skipped,
                   spec=spec, tokenizer=tokenizer, source=index.source.source)

    # -- serving -----------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return len(self.names)

    def load_image(self, i: int) -> np.ndarray:
        """uint8 (C, size, size) of sample i; BadSampleError when it cannot be served."""
        return self.loader(i)

    def check_ids(self, ids: np.ndarray) -> np.ndarray:
        """`ids` as a 1-D integer array, each in [0, num_samples); else DataError."""
        ids = np.atleast_1d(np.asarray(ids))
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise DataError(f"ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_samples):
            raise DataError(f"ids span [{ids.min()}, {ids.max()}], expected [0, "
                            f"{self.num_samples - 1}] for {self.source}")
        return ids

    def serve(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(served ids int64 (B,), pixels uint8 (B, C, size, size)) of `ids`, decoded in this
        process (serve_batch); what it finds bad joins `skipped` and `repeats`."""
        ids = self.check_ids(ids)
        return self.absorb(serve_batch(ids, self.loader, self.skipped, self.source))

    def absorb(self, batch: ServedBatch) -> tuple[np.ndarray, np.ndarray]:
        """Record a served batch's bad ids and repeats (found here or in a --workers
        process) as this process's own; -> (served ids, pixels)."""
        self.skipped.update(batch.new_skipped)
        self.repeats += batch.repeats
        return batch.served, batch.pixels

    def served_ids(self, ids: np.ndarray) -> np.ndarray:
        """`ids` with each bad one replaced by a good id of the batch (what the batch then
        trains on and the pruner records); their images are kept for `images[...]`."""
        served, images = self.serve(ids)
        self._last = (served, images)
        return served

    def decode_batch(self, ids: np.ndarray) -> np.ndarray:
        """uint8 (B, C, size, size) of `ids` (the batch served_ids just gave: no decode again);
        a bad id's slot holds a good id's image of the batch."""
        last = getattr(self, "_last", None)
        if last is not None and np.array_equal(last[0], ids):
            return last[1]
        return self.serve(ids)[1]

    # -- TrainData (common/data_layer.py) ----------------------------------------------------
    def epoch_stats(self, plan: Any) -> dict[str, int]:
        return {"skipped_samples": len(self.skipped), "repeated_samples": self.repeats}

    def skipped_samples(self) -> dict[int, tuple[str, str]]:
        return {int(i): (self.names[i], str(r)) for i, r in self.skipped.items()}

    def disk_corpus(self) -> None:
        return None  # a shard index checks itself; a CSV is read once at start
