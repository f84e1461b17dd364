"""The JAX MoCo trainer's data, torch-free: what it trains on and what kNN / the probe score.

Training images (`--data`), each served by id as uint8 (B, 1, 28, 28) that jax/augment.two_crops
turns into the two crops (the JAX backbones take the cpu presets' 28 x 28 grey input, so every
corpus image is decoded to `ImageSpec.cpu()`, as the JAX CLIP trainer decodes its corpus):

- `fmnist` (default): `Images`, Fashion-MNIST's training subset in memory, planted
  near-duplicates (`--duplicate-share`) as the PyTorch trainer builds them.
- `folder:DIR`, `csv:PATH`, `shards:SOURCE`: `CorpusImages`, an image-only corpus read by id
  through corpora/arrays.CorpusArrays: a batch's images are decoded when the batch is made, so a
  pruned sample is never read nor decoded; a bad sample (missing, empty, undecodable, a shard key
  with no image member) keeps its id, is skipped and counted (`skipped_samples` and, per epoch,
  `repeated_samples`: its slot holds a repeat of a good id of the same batch), and is listed in
  skipped.jsonl, as the PyTorch trainer does (moco/data.py). Shards are local .tar files read by
  seeking (a folder, a .tar, a brace pattern, a '::' list; their key index in the run
  directory, so the dataset folder is only read); `pipe:` cannot seek and is refused.

`--workers N` (`open_decoder`): a corpus's batches are read and decoded ahead in N worker
processes by corpora/decode_pool.BatchDecoder (the JAX CLIP trainer's pool; the same served
ids, pixels and bad-sample findings as N = 0, and the two crops still drawn in the trainer's
process from its checkpointed generator, so runs and resume do not depend on N).

Evaluation sets (`build_eval_sets`): `--eval-folder DIR` [`--eval-train-folder DIR`] through
common/moco_user_eval.labelled_splits (the PyTorch trainer's split, as numpy), no Fashion-MNIST
file read on a corpus; else Fashion-MNIST (its training subset as kNN bank and probe training
set, its test split scored) when the run trains on it or the files are there; else nothing
(the run trains only and says so).
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from reference_trainers.common.corpora.arrays import CorpusArrays, FileReader, ShardReader
from reference_trainers.common.corpora.images import (ImageSpec, list_image_tree,
                                                      unreadable_in_tree)
from reference_trainers.common.data import load_fashion_mnist, split_subset
from reference_trainers.common.data_layer import HeldInMemory, NothingPlanted, Planted
from reference_trainers.common.errors import DataError, TrainerError
from reference_trainers.common.moco_user_eval import LabelledArrays, labelled_splits
from reference_trainers.common.user_sets import fashion_mnist_for

__all__ = ["CorpusImages", "Images", "build_data", "build_eval_sets", "corpus_images",
           "open_decoder"]

DATA_KINDS = ("fmnist", "folder:DIR", "csv:PATH", "shards:SOURCE")


class Images(HeldInMemory):
    """N images as uint8 (N, 1, 28, 28), int64 labels (N,), duplicate_of (N,) (-1: none)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, duplicate_of: np.ndarray) -> None:
        self.images = np.ascontiguousarray(images[:, None])
        self.labels = np.asarray(labels, dtype=np.int64)
        self.duplicate_of = duplicate_of

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return 10

    def planted(self) -> Planted:
        """TrainData (common/data_layer.py); the rest comes from HeldInMemory."""
        return Planted(duplicate_of=self.duplicate_of)


class _NoCaptions:
    """An image-only corpus's tokenizer: every caption is (0,) tokens."""

    @staticmethod
    def encode(texts: list[str], context_length: int | None = None) -> np.ndarray:
        return np.zeros((len(texts), 0), np.int64)


class CorpusImages(NothingPlanted):
    """An image-only corpus served as uint8 batches by id (module docstring): `images[ids]`
    after `served_ids(ids)`, as jax/moco.batch_maker asks. TrainData (common/data_layer.py).

    Args: arrays: the CorpusArrays; listing: the names corpus.json fingerprints (None for
      shards: their index checks itself); labels / class_names: a folder tree's (else None).
    """

    batch_mode = "corpus"

    def __init__(self, arrays: CorpusArrays, *, listing: list[str] | None,
                 labels: np.ndarray | None = None,
                 class_names: tuple[str, ...] | None = None) -> None:
        self.arrays, self.listing = arrays, listing
        self.labels, self.class_names = labels, class_names
        self.images = arrays.images
        self._repeats_before = 0  # arrays.repeats at the start of the epoch being trained

    def __len__(self) -> int:
        return self.arrays.num_samples

    @property
    def num_samples(self) -> int:
        return self.arrays.num_samples

    def served_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.arrays.served_ids(ids)

    def epoch_stats(self, plan: Any) -> dict[str, int]:
        """Called once at the end of each epoch: the samples skipped so far and the slots this
        epoch refilled with a repeat (per epoch, so a resumed run's rows equal an unbroken
        run's), the PyTorch trainer's keys."""
        repeated = self.arrays.repeats - self._repeats_before
        self._repeats_before = self.arrays.repeats
        return {"skipped_samples": len(self.arrays.skipped), "repeated_samples": repeated}

    def skipped_samples(self) -> dict[int, tuple[str, str]]:
        return self.arrays.skipped_samples()

    def disk_corpus(self) -> "CorpusImages | None":
        return self if self.listing is not None else None


def corpus_images(data: str, *, run_path: Any = None, shard_index: str | None = None,
                  train_num_samples: int | None = None) -> CorpusImages:
    """`--data folder:DIR | csv:PATH | shards:SOURCE` as CorpusImages (module docstring)."""
    kind, _, where = data.partition(":")
    spec = ImageSpec.cpu()
    if kind == "folder" and where:
        root = pathlib.Path(where)
        relative, labels, classes = list_image_tree(root)
        paths = [str(root / r) for r in relative]
        arrays = CorpusArrays(paths, [""] * len(paths), FileReader(paths),
                              unreadable_in_tree(root, relative), spec=spec,
                              tokenizer=_NoCaptions(), source=str(root))
        return CorpusImages(arrays, listing=relative, labels=labels, class_names=classes)
    if kind == "csv" and where:
        arrays = CorpusArrays.from_csv(where, spec=spec, tokenizer=_NoCaptions(),
                                       caption_column=None)
        return CorpusImages(arrays, listing=list(arrays.names))
    if kind == "shards" and where:
        return CorpusImages(_shard_arrays(where, spec, run_path, shard_index, train_num_samples),
                            listing=None)
    raise TrainerError(f"--data {data!r}: choose one of {', '.join(DATA_KINDS)}")


def _shard_arrays(source: str, spec: ImageSpec, run_path: Any, shard_index: str | None,
                  train_num_samples: int | None) -> CorpusArrays:
    """Image-only shards (no .txt needed) as CorpusArrays reading each image by a seek."""
    from reference_trainers.common.corpora.run_index import index_for_run
    from reference_trainers.common.corpora.shard_sources import ShardList, is_streamed

    streamed = [u for u in ShardList.resolve(source).urls if is_streamed(u)]
    if streamed:
        raise DataError(f"the JAX MoCo trainer reads shards by id, and {streamed[0]} is a pipe: "
                        "command that cannot seek: copy the shards to a local folder, or train "
                        "with --framework torch (which streams pipe: shards)")
    index = index_for_run(source, run_path=run_path, shard_index=shard_index,
                          train_num_samples=train_num_samples, captions=False)
    keys = [str(k) for k in index.keys.tolist()]
    return CorpusArrays(keys, [""] * len(keys), ShardReader(index), index.skipped_for(False),
                        spec=spec,
                        tokenizer=_NoCaptions(), source=index.source.source)


def build_data(cfg: Any, run_path: Any = None) -> Images | CorpusImages:
    """The training images of `--data` (module docstring)."""
    if cfg.data == "fmnist":
        splits = load_fashion_mnist(cfg.data_dir)
        _, *train = split_subset(splits, train=True, num_samples=cfg.num_train,
                                 duplicate_share=cfg.duplicate_share, seed=cfg.seed)
        return Images(*train)
    if cfg.duplicate_share:
        raise TrainerError(f"--duplicate-share {cfg.duplicate_share} plants duplicates in "
                           f"Fashion-MNIST only; drop it with --data {cfg.data}")
    return corpus_images(cfg.data, run_path=run_path, shard_index=cfg.shard_index,
                         train_num_samples=cfg.train_num_samples)


def build_eval_sets(cfg: Any, train: Images | CorpusImages
                    ) -> tuple[Images | LabelledArrays, Images | LabelledArrays] | None:
    """(the kNN bank / probe's training set, the scored set), or None: nothing to evaluate
    (module docstring). On Fashion-MNIST the bank is the training data itself, as in torch."""
    if cfg.eval_folder:
        return labelled_splits(cfg.eval_folder, cfg.eval_train_folder, spec=ImageSpec.cpu(),
                               seed=cfg.seed)
    splits = fashion_mnist_for(cfg, own_sets=False)
    if splits is None:
        return None
    _, *test = split_subset(splits, train=False, num_samples=cfg.num_test, seed=cfg.seed)
    if cfg.data == "fmnist":
        return train, Images(*test)
    _, *bank = split_subset(splits, train=True, num_samples=cfg.num_train, seed=cfg.seed)
    return Images(*bank), Images(*test)


def open_decoder(cfg: Any, data: Images | CorpusImages, rank: int) -> Any:
    """A corpus's corpora/decode_pool.BatchDecoder with `--workers` processes (0: in this
    process), its line printed by process 0; None for Fashion-MNIST, held in memory, where
    --workers has nothing to decode (said once). A bad count is a TrainerError."""
    from reference_trainers.common.corpora.decode_pool import BatchDecoder, check_worker_count

    workers = check_worker_count(cfg.workers)
    if data.batch_mode != "corpus":
        if workers and rank == 0:
            print(f"--workers {workers}: Fashion-MNIST is held in memory, nothing to decode: "
                  "the flag does nothing here (it decodes folder:/csv:/shards: corpora)",
                  flush=True)
        return None
    decoder = BatchDecoder(data.arrays, workers)
    if workers and rank == 0:
        print(decoder.describe(), flush=True)
    return decoder
