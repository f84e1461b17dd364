"""The MoCo trainer's data: Fashion-MNIST in memory (the default), or an image-only corpus
(`--data folder:DIR | csv:PATH | shards:DIR`), each served as two augmented crops per id.

- `fmnist`: `ImageData`, uint8 (N, 1, 28, 28) in memory, batches gathered by the sampler's ids.
- `folder:DIR`: an ImageNet-style tree (corpora.ImageFolderCorpus): ids are positions in the
  sorted file list, class names from the folders (kept in the run directory).
- `csv:PATH`: rows with an `image` column (corpora.CsvCorpus, image-only: a caption column may
  be there and is ignored).
- `shards:DIR`: webdataset-style tars read as a pruned stream (corpora.ShardStream with
  captions=False: a sample needs only its image member, no .txt).

Pruned samples are never decoded (the sampler never asks for a pruned id; the stream seeks past
it); bad images are skipped and counted, and keep their ids. Corpus images are decoded to the
`image_spec` of the backbone (28 x 28 grey for the CPU backbones, RGB at the preset's size with
ImageNet statistics for vit_small / vit_base) and cropped twice at that resolution: grey images
with the grayscale pair (`CropView`), RGB ones with MoCo v3's own recipe (`ColourView`).

Evaluation stays on Fashion-MNIST: kNN and the linear probe fit on its training split (the
`--num-train` subset) and score its test split, the test images resized to the spec.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from reference_trainers.common.augment import ColourView, CropView, two_crops
from reference_trainers.common.data import load_fashion_mnist, split_subset
from reference_trainers.common.data_layer import HeldInMemory, NothingPlanted, Planted
from reference_trainers.common.errors import TrainerError
from reference_trainers.common.corpus_record import check_corpus  # noqa: F401 (the trainer's)
from reference_trainers.common.torch_data import normalise, resize_to_spec
from reference_trainers.common.views import moco_view_pair

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageData", "build_data", "check_corpus",
           "eval_preprocess", "image_spec", "moco_views", "spec_two_crops"]

# torchvision's ImageNet statistics, as MoCo v3's main_moco.py normalises.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATA_KINDS = ("fmnist", "folder:DIR", "csv:PATH", "shards:DIR")


Views = tuple[CropView, CropView] | tuple[ColourView, ColourView]


def moco_views(crop_min: float, channels: int = 1) -> Views:
    """MoCo v3's asymmetric pair (common/augment.py) with the run's smallest crop area: the
    grayscale adaptation for 1-channel images, MoCo v3's RGB recipe for 3 channels."""
    return moco_view_pair(ColourView if channels == 3 else CropView, crop_min)


class ImageData(HeldInMemory):
    """N images held as uint8 (N, 1, 28, 28) with int64 labels (N,) and duplicate_of (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, duplicate_of: np.ndarray,
                 views: tuple[CropView, CropView]) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images[:, None]))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.duplicate_of = torch.from_numpy(duplicate_of)
        self.views = views

    def __len__(self) -> int:
        return len(self.images)

    # -- TrainData (common/data_layer.py): the rest comes from HeldInMemory ------------------
    def planted(self) -> Planted:
        return Planted(duplicate_of=self.duplicate_of.numpy())

    def two_crops(self, ids: np.ndarray,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return two_crops(self.images[torch.from_numpy(ids)], generator=generator,
                         views=self.views)

    def crops(self, ids: np.ndarray, generator: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(x1, x2 float32 (B, 1, 28, 28) on `device`, ids (B,)): every id is served."""
        x1, x2 = self.two_crops(ids, generator)
        return x1.to(device), x2.to(device), ids


class CorpusCrops(NothingPlanted):
    """A map-style image-only corpus (CsvCorpus / ImageFolderCorpus) served as two crops.
    Bad ids in a batch are refilled with repeats of the batch's good ids (fill_bad), so every
    rank keeps its batch size; a batch of bad ids only comes back empty."""

    def __init__(self, corpus: Any, views: Views) -> None:
        self.corpus, self.views, self.spec = corpus, views, corpus.spec
        self._repeats_before = corpus.repeats  # at the start of the epoch being trained

    def __len__(self) -> int:
        return len(self.corpus)

    # -- TrainData (common/data_layer.py): the corpus's, with the batches' repeats -----------
    batch_mode = "corpus"

    @property
    def num_samples(self) -> int:
        return len(self.corpus)

    def epoch_stats(self, plan: Any) -> dict[str, int]:
        """Called once at the end of each epoch: the samples skipped so far, and the slots
        this epoch refilled with a repeat (per epoch, as a shard stream counts its top-ups, so
        a resumed run's rows equal an uninterrupted run's)."""
        repeated, self._repeats_before = self.corpus.repeats - self._repeats_before, \
            self.corpus.repeats
        return {"skipped_samples": len(self.corpus.skipped), "repeated_samples": repeated}

    def skipped_samples(self) -> dict[int, tuple[str, str]]:
        return self.corpus.skipped_samples()

    def disk_corpus(self) -> Any:
        return self.corpus

    def crops(self, ids: np.ndarray, generator: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        images, served = self.corpus.raw_batch(ids, fill_bad=True)
        x1, x2 = spec_two_crops(images.to(device), self.spec, generator, self.views)
        return x1, x2, served.numpy()


def spec_two_crops(images: torch.Tensor, spec: Any, generator: torch.Generator,
                   views: Views) -> tuple[torch.Tensor, torch.Tensor]:
    """Two crops of uint8 (B, C, S, S) at their own resolution, normalised with the spec's
    per-channel statistics -> two float32 (B, C, S, S). For an RGB spec, a grayscale pair
    (`CropView`, as a caller that built its views without the spec passes) is replaced by
    MoCo v3's RGB pair with the same smallest crop area."""
    if spec.channels == 3 and isinstance(views[0], CropView):
        views = moco_views(views[0].scale[0], channels=3)
    x1, x2 = two_crops(images, generator=generator, views=views, normalise=False)
    shape = (1, spec.channels, 1, 1)
    mean = torch.tensor(spec.mean, dtype=x1.dtype, device=x1.device).view(shape)
    std = torch.tensor(spec.std, dtype=x1.dtype, device=x1.device).view(shape)
    return (x1 - mean) / std, (x2 - mean) / std


def image_spec(cfg: Any):
    """What corpus images are decoded to: 28 x 28 grey with Fashion-MNIST's statistics for the
    CPU backbones; RGB at the preset's size with ImageNet's statistics for vit_small / vit_base."""
    from reference_trainers.common.corpora import ImageSpec

    if cfg.backbone in ("vit_small", "vit_base"):
        from reference_trainers.models import moco_preset

        size = moco_preset(cfg.backbone).image_size
        return ImageSpec("RGB", size, IMAGENET_MEAN, IMAGENET_STD, size // 14)
    return ImageSpec.cpu()


def eval_preprocess(cfg: Any):
    """Fashion-MNIST images (uint8 (B, 1, 28, 28)) as the backbone's input: normalised as
    before on the default data; resized, channel-repeated and spec-normalised on a corpus.
    The user's --eval-folder images are decoded with the run's spec: normalised with it."""
    if getattr(cfg, "eval_folder", None):
        from reference_trainers.common.moco_user_eval import spec_normalise

        return spec_normalise(image_spec(cfg))
    if cfg.data == "fmnist" or cfg.backbone not in ("vit_small", "vit_base"):
        return normalise
    return resize_to_spec(image_spec(cfg))


def _fmnist_split(splits: Any, train: bool, num: int | None, duplicate_share: float, seed: int,
                  views: tuple[CropView, CropView]) -> ImageData:
    _, images, labels, duplicate_of = split_subset(splits, train=train, num_samples=num,
                                                   duplicate_share=duplicate_share, seed=seed)
    return ImageData(images, labels, duplicate_of, views)


def build_data(cfg: Any, *, rank: int = 0, world: int = 1, run_path: Any = None
               ) -> tuple[Any, ImageData, ImageData]:
    """(training data, the probe's training split, the test split). On Fashion-MNIST the first
    two are the same object; on a corpus the probe trains on Fashion-MNIST's training split.
    run_path: the run directory, where a shards: source keeps its key index."""
    if cfg.eval_folder:  # the user's labelled images: no Fashion-MNIST needed on a corpus
        from reference_trainers.common.moco_user_eval import eval_folder_splits

        probe_train, test = eval_folder_splits(cfg.eval_folder, cfg.eval_train_folder,
                                               spec=image_spec(cfg), seed=cfg.seed)
        if cfg.data != "fmnist":
            return _corpus(cfg, rank, world, run_path), probe_train, test
        views = moco_views(cfg.crop_min)
        splits = load_fashion_mnist(cfg.data_dir)
        return (_fmnist_split(splits, True, cfg.num_train, cfg.duplicate_share, cfg.seed,
                              views), probe_train, test)
    splits = load_fashion_mnist(cfg.data_dir)
    views = moco_views(cfg.crop_min)
    if cfg.data == "fmnist":
        train = _fmnist_split(splits, True, cfg.num_train, cfg.duplicate_share, cfg.seed, views)
        probe_train: ImageData = train
    else:
        if cfg.duplicate_share:
            raise TrainerError(f"--duplicate-share {cfg.duplicate_share} plants duplicates in "
                               f"Fashion-MNIST only; drop it with --data {cfg.data}")
        train = _corpus(cfg, rank, world, run_path)
        probe_train = _fmnist_split(splits, True, cfg.num_train, 0.0, cfg.seed, views)
    test = _fmnist_split(splits, False, cfg.num_test, 0.0, cfg.seed, views)
    return train, probe_train, test


def _corpus(cfg: Any, rank: int, world: int, run_path: Any = None) -> Any:
    from reference_trainers.common.corpora.decode_pool import check_worker_count

    kind, _, where = cfg.data.partition(":")
    spec = image_spec(cfg)
    views = moco_views(cfg.crop_min, spec.channels)
    if kind == "folder" and where:
        from reference_trainers.common.corpora import ImageFolderCorpus

        return CorpusCrops(ImageFolderCorpus(where, spec=spec), views)
    if kind == "csv" and where:
        from reference_trainers.common.corpora import CsvCorpus

        return CorpusCrops(CsvCorpus(where, spec=spec, tokenizer=None, caption_column=None),
                           views)
    if kind == "shards" and where:
        from reference_trainers.common.corpora import ShardStream
        from reference_trainers.common.corpora.run_index import index_for_run

        index = index_for_run(where, run_path=run_path, shard_index=cfg.shard_index,
                              train_num_samples=cfg.train_num_samples, captions=False)
        return ShardStream(index, tokenizer=None, spec=spec, rank=rank, world_size=world,
                           num_workers=check_worker_count(cfg.workers), seed=cfg.seed,
                           captions=False)
    raise TrainerError(f"--data {cfg.data!r}: choose one of {', '.join(DATA_KINDS)}")
