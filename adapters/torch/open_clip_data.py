"""The training data of a `--scan` open_clip run: open_clip's CSV / synthetic dataset or its
webdataset shards, served by epoch plan with every sample's id.

- Map-style (CSV, synthetic): the dataset open_clip built, wrapped by `WithIds`, under a
  `ScanSampler` (DistributedSampler's order over the kept ids).
- webdataset: open_clip's own stages (shard shuffle by seed + epoch, split by node and worker,
  tar reading, sample shuffle) with one stage added before decoding: `KeepPlanned` looks each
  sample up in a `ShardIndex` (built once from the tar headers) and drops the pruned ones, so a
  pruned sample is never decoded or transformed. Batches per epoch follow open_clip's rule
  (ceil(kept / global batch), rounded up to the workers; short workers go round again).

Either way `set_epoch(epoch)` plans the epoch, and the loader face (`IdBatches`) announces the
epoch's batch count to train.py and to the fractional-epoch schedule. Every DataLoader gets a
generator seeded by (seed, epoch), so worker seeds (augmentations) do not depend on how many
epochs this process ran: a resumed run draws what an uninterrupted one draws. With
--workers 0 augmentations draw from torch's global generator instead (open_clip's behaviour).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from adapters.torch.open_clip import FractionalEpochSchedule, IdBatches, IdSlot, WithIds
from adapters.torch.sampler import ScanSampler
from scan_core import EpochPlan, ScanPruner
from scan_core.errors import ScanConfigError, ScanInputError

IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "webp")  # open_clip's filter_no_caption_or_no_image


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's base_plus_ext: ("dir/key", "ext") at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class ShardIndex:
    """Dense ids for the samples of local tar shards: (shard url, key) -> id, in shard order
    then member order. Only samples open_clip trains on (a caption and an image) get an id.
    Built from tar headers (no image is decoded); a dict of ~190 bytes per sample."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self.ids: dict[tuple[str, str], int] = {}
        for url in self.urls:
            if ":" in url.split("/")[0] or url.startswith("pipe:"):
                raise ScanConfigError(
                    f"--scan needs local tar shards to index, got {url!r}; copy the shards to "
                    "a local or mounted file system (streamed `pipe:` / URL shards are not "
                    "supported yet).")
            suffixes: dict[str, set[str]] = {}
            with tarfile.open(url, "r:") as tar:
                for member in tar:
                    if member.isfile():
                        key, ext = _split_key(member.name)
                        suffixes.setdefault(key, set()).add(ext)
            for key, exts in suffixes.items():
                if "txt" in exts and exts.intersection(IMAGE_SUFFIXES):
                    self.ids[(url, key)] = len(self.ids)
        if not self.ids:
            raise ScanInputError(f"no sample with a caption and an image in shards {self.urls}.")

    def __len__(self) -> int:
        return len(self.ids)


class KeepPlanned:
    """A webdataset stage: adds "__id__" to each sample and drops those the plan prunes.
    Samples the index does not know (no caption or no image) pass on; open_clip's own filter
    drops them next. `kept` is a (N,) bool mask set per epoch, before workers start."""

    def __init__(self, index: ShardIndex) -> None:
        self.index = index
        self.kept: np.ndarray | None = None

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        kept = self.kept
        if kept is None:
            raise ScanInputError("KeepPlanned ran before set_epoch() gave it the epoch's plan.")
        for sample in samples:
            sample_id = self.index.ids.get((sample.get("__url__"), sample.get("__key__")))
            if sample_id is None:
                yield sample
            elif kept[sample_id]:
                sample["__id__"] = sample_id
                yield sample


class ScanTrainData:
    """Stands in for open_clip's DataInfo of the training split (`dataloader`, `set_epoch`)."""

    def __init__(self, pruner: ScanPruner, slot: IdSlot, *, make_loader: Callable[..., Any],
                 batch_size: int, world_size: int, seed: int, nominal_batches: int) -> None:
        self.pruner, self.slot, self.make_loader = pruner, slot, make_loader
        self.batch_size, self.world_size = int(batch_size), int(world_size)
        self.seed = int(seed)
        self.nominal_batches = int(nominal_batches)
        self.schedule: FractionalEpochSchedule | None = None
        self.plan: EpochPlan | None = None
        self.dataloader = IdBatches(None, slot, num_batches=nominal_batches,
                                    num_samples=nominal_batches * batch_size * world_size)

    def set_epoch(self, epoch: int) -> None:
        self.plan = self.pruner.plan_epoch(epoch)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        loader, num_batches = self.make_loader(self.plan, epoch, generator)
        if num_batches < 1:
            raise ScanConfigError(
                f"epoch {epoch} keeps {self.plan.num_kept} samples, too few for one batch of "
                f"{self.batch_size} per rank on {self.world_size} rank(s): lower --batch-size "
                "or the SCAN rates.")
        self.dataloader.loader = loader
        self.dataloader.num_batches = num_batches
        self.dataloader.num_samples = num_batches * self.batch_size * self.world_size
        if self.schedule is not None:
            self.schedule.set_epoch(epoch, num_batches)


def map_style_data(pruner: ScanPruner, slot: IdSlot, dataset: Any, *, batch_size: int,
                   rank: int, world_size: int, workers: int, seed: int) -> ScanTrainData:
    """CSV / synthetic: open_clip's dataset under a ScanSampler, drop_last as open_clip."""
    sampler = ScanSampler(pruner, num_replicas=world_size, rank=rank, seed=seed)
    wrapped = WithIds(dataset)

    def make_loader(plan: EpochPlan, epoch: int, generator: torch.Generator):
        sampler.set_epoch(epoch)
        loader = DataLoader(wrapped, batch_size=batch_size, sampler=sampler, drop_last=True,
                            num_workers=workers, pin_memory=torch.cuda.is_available(),
                            generator=generator)
        return loader, len(sampler) // batch_size

    nominal = (len(dataset) + world_size - 1) // world_size // batch_size
    return ScanTrainData(pruner, slot, make_loader=make_loader, batch_size=batch_size,
                         world_size=world_size, seed=seed, nominal_batches=nominal)


def webdataset_data(pruner: ScanPruner, slot: IdSlot, index: ShardIndex, args: Any,
                    preprocess: Callable[[Any], torch.Tensor],
                    tokenizer: Callable[[Any], torch.Tensor]) -> ScanTrainData:
    """open_clip's get_wds_dataset pipeline (3.3.0) with KeepPlanned before decoding."""
    import webdataset as wds
    from open_clip_train import data as oc

    shared_epoch, keep = oc.SharedEpoch(0), KeepPlanned(index)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(index.urls),
        oc.detshuffle2(bufsize=oc._SHARD_SHUFFLE_SIZE, initial=oc._SHARD_SHUFFLE_INITIAL,
                       seed=args.seed, epoch=shared_epoch),
        wds.split_by_node, wds.split_by_worker,
        oc.tarfile_to_samples_nothrow,
        keep,
        # seeded by seed + epoch, unlike open_clip's wds.shuffle (seeded by the clock), so that
        # a resumed run replays an uninterrupted one
        oc.detshuffle2(bufsize=oc._SAMPLE_SHUFFLE_SIZE, initial=oc._SAMPLE_SHUFFLE_INITIAL,
                       seed=args.seed, epoch=shared_epoch),
        wds.select(oc.filter_no_caption_or_no_image),
        wds.select(partial(_has_key, "__id__")),
        wds.decode("pilrgb", handler=oc.log_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda text: tokenizer(text)[0]),
        wds.to_tuple("image", "text", "__id__"),
        wds.batched(args.batch_size, partial=False),
        _not_empty)
    workers, world = max(1, args.workers), args.world_size
    if len(index.urls) < workers * world:
        raise ScanConfigError(f"{len(index.urls)} shard(s) for {workers} worker(s) x {world} "
                              "rank(s): open_clip needs at least one shard per worker.")
    global_batch = args.batch_size * world

    def make_loader(plan: EpochPlan, epoch: int, generator: torch.Generator):
        shared_epoch.set_value(epoch)
        keep.kept = plan.keep_mask(np.arange(plan.num_samples, dtype=np.int64))
        worker_batches = _ceil_div(_ceil_div(plan.num_kept, global_batch), workers)
        pipeline.with_epoch(worker_batches)
        loader = wds.WebLoader(pipeline, batch_size=None, shuffle=False,
                               num_workers=args.workers, persistent_workers=False,
                               generator=generator)
        return loader, worker_batches * workers

    nominal = _ceil_div(_ceil_div(len(index), global_batch), workers) * workers
    return ScanTrainData(pruner, slot, make_loader=make_loader, batch_size=args.batch_size,
                         world_size=world, seed=args.seed, nominal_batches=nominal)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _has_key(key: str, sample: dict[str, Any]) -> bool:
    return key in sample


def _not_empty(batches: Iterable[Any]) -> Iterator[Any]:
    """Pass batches on; a pass over this worker's shards that gives none would make
    with_epoch() go round forever, so it raises instead."""
    count = 0
    for batch in batches:
        count += 1
        yield batch
    if count == 0:
        raise ScanInputError(
            "a DataLoader worker's shards kept fewer samples than one batch this epoch: use "
            "fewer --workers, a smaller --batch-size or more, smaller shards.")
