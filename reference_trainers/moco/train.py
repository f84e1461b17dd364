"""MoCo v3 pre-training with SCAN, in PyTorch: one readable trainer in labelled sections.

    python -m reference_trainers.moco --preset cpu-fmnist-moco --out runs/moco      # 1 process
    torchrun --nproc_per_node=2 -m reference_trainers.moco --preset cpu-tiny-moco --out runs/ddp

Every epoch: the pruner plans the epoch -> the sampler serves this rank's kept ids -> each step
draws two crops, runs the base and momentum encoders, and computes MoCo v3's symmetric loss
with its two per-sample views, ctr(q1, k2) and ctr(q2, k1) -> the ids and per-sample losses go
to the pruner -> at the epoch's end the pruner combines ranks and persists, the trainer
evaluates (kNN, linear probe on frozen backbone features), logs and checkpoints. The run
directory, summary, progress output, resume and pruning flags are the CLIP trainer's
(docs/clip-trainer.md); docs/moco-trainer.md has what is MoCo's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adapters.torch import ScanSampler, TorchCommunicator, moco_loss, record
from reference_trainers.common.lifecycle import fmt
from reference_trainers.common import evaluation, lifecycle
from reference_trainers.common.augment import CropView, two_crops
from reference_trainers.common.config import build_parser, config_from_args
from reference_trainers.common.data import (load_fashion_mnist, plant_near_duplicates,
                                            subset_indices)
from reference_trainers.common.lifecycle import init_distributed, load_checkpoint, save_checkpoint
from reference_trainers.common.progress import EpochBar, epoch_line
from reference_trainers.common.rundir import RunDir
from reference_trainers.common.schedule import cosine_lr, progress
from reference_trainers.common.torch_data import normalise
from reference_trainers.moco.config import FLAGS, PRESETS, MocoConfig
from reference_trainers.moco.model import MoCo, build_moco, moco_momentum
from reference_trainers.moco.optim import build_optimizer
from scan_core import ScanPruner

HEADLINE = ("linear_probe_top1", "knn_top1")


# == 1. Set-up: init_distributed (common/lifecycle.py), threads and seeds in run() ===============
# == 2. Data: images only, in memory, two crops per batch =========================================
class ImageData:
    """N images held as uint8 (N, 1, 28, 28) with int64 labels (N,) and duplicate_of (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, duplicate_of: np.ndarray,
                 views: tuple[CropView, CropView]) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images[:, None]))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.duplicate_of = torch.from_numpy(duplicate_of)
        self.views = views

    def __len__(self) -> int:
        return len(self.images)

    def two_crops(self, ids: np.ndarray,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return two_crops(self.images[torch.from_numpy(ids)], generator=generator,
                         views=self.views)


def build_data(cfg: MocoConfig) -> tuple[ImageData, ImageData]:
    splits = load_fashion_mnist(cfg.data_dir)
    views = (CropView(scale=(cfg.crop_min, 1.0)),
             CropView(scale=(cfg.crop_min, 1.0), blur_p=0.1, solarize_p=0.2))

    def split(images, labels, num, duplicate_share):
        ids = np.arange(len(labels)) if num is None else subset_indices(labels, num, cfg.seed)
        images, labels, duplicate_of = plant_near_duplicates(
            images[ids], np.asarray(labels)[ids], duplicate_share, cfg.seed)
        return ImageData(images, labels, duplicate_of, views)

    return (split(splits.train_images, splits.train_labels, cfg.num_train, cfg.duplicate_share),
            split(splits.test_images, splits.test_labels, cfg.num_test, 0.0))


# == 3. Evaluation: kNN and linear probe on frozen backbone features (MoCo v3's metric) ==========
def knn_top1(train_features: torch.Tensor, train_labels: torch.Tensor,
             test_features: torch.Tensor, test_labels: torch.Tensor, *, k: int,
             num_classes: int = 10, chunk: int = 1024) -> float:
    """Cosine k-nearest-neighbour top-1 with similarity-weighted votes (exp(sim / 0.07))."""
    train_n, test_n = F.normalize(train_features, dim=1), F.normalize(test_features, dim=1)
    correct = 0
    for start in range(0, len(test_n), chunk):
        sims, idx = (test_n[start:start + chunk] @ train_n.T).topk(min(k, len(train_n)), dim=1)
        votes = torch.zeros(len(sims), num_classes)
        votes.scatter_add_(1, train_labels[idx], (sims / 0.07).exp())
        correct += int((votes.argmax(1) == test_labels[start:start + chunk]).sum())
    return correct / max(len(test_n), 1)


def evaluate(model: MoCo, train: ImageData, test: ImageData, cfg: MocoConfig, *,
             probe: bool) -> dict[str, float]:
    def features(data: ImageData) -> torch.Tensor:
        return evaluation.extract_features(model.backbone, data.images, preprocess=normalise)

    train_features, test_features = features(train), features(test)
    out = {"knn_top1": knn_top1(train_features, train.labels, test_features, test.labels,
                                k=cfg.knn_k)}
    if probe:
        out["linear_probe_top1"] = evaluation.linear_probe_top1(
            train_features, train.labels, test_features, test.labels, num_classes=10,
            seed=cfg.seed)
    return out


# == 4. One epoch of training =====================================================================
def train_epoch(model, optimizer, sampler: ScanSampler, pruner: ScanPruner, data: ImageData,
                cfg: MocoConfig, epoch: int, generator: torch.Generator, base_lr: float,
                quiet: bool) -> dict[str, Any]:
    plan = sampler.plan
    batches = list(sampler.batches(cfg.batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        # BatchNorm cannot train on one sample; a pruned epoch's lone last sample joins the
        # batch before it, so every kept id is still trained on and recorded once.
        batches[-2:] = [np.concatenate(batches[-2:])]
    bar = EpochBar(epoch, len(batches), phase=plan.phase, kept_share=plan.keep_fraction,
                   enabled=not quiet)
    weighted = plan.weight_bits is not None
    loss_sum, samples, lr, momentum = 0.0, 0, 0.0, cfg.momentum
    for i, ids in enumerate(batches):
        # LR and momentum follow fractional epochs, so shrunken (pruned) epochs still end both
        # schedules exactly at the last step (MoCo v3's adjust_learning_rate / moco_m).
        done = progress(epoch, i, len(batches))
        lr = cosine_lr(base_lr, done, cfg.epochs, cfg.lr_warmup_epochs, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        momentum = moco_momentum(cfg.momentum, done, cfg.epochs)
        x1, x2 = data.two_crops(ids, generator)
        q1, q2, k1, k2 = model(x1, x2, momentum)
        weights = torch.from_numpy(plan.loss_weights(ids)) if weighted else None
        out = moco_loss(q1, q2, k1, k2, cfg.temperature, weights=weights)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        record(pruner, ids, out.per_sample)
        loss_sum += float(out.loss.detach()) * len(ids)
        samples += len(ids)
        bar.update(i + 1, loss_sum / samples)
    return {"steps": len(batches), "samples": samples, "lr": lr, "momentum": momentum,
            "train_loss": loss_sum / max(samples, 1)}


# == 5. Checkpoints: save_checkpoint / load_checkpoint (common/lifecycle.py) =====================
# == 6. The run ===================================================================================
def run(cfg: MocoConfig, out: str, *, resume: bool = False, quiet: bool = False,
        model: MoCo | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Train (or continue, with resume) the run in `out`; returns the summary.
    model: any MoCo (e.g. around another backbone); default build_moco(cfg.backbone, ...)."""
    rank, world = init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = RunDir(out)
    if rank == 0:
        run_dir.write_config(cfg.to_dict(), resume=resume)
    train, test = build_data(cfg)
    torch.manual_seed(cfg.seed)  # the trainer's own process: model initialisation only
    model = model if model is not None else build_moco(
        cfg.backbone, width=cfg.width, dim=cfg.dim, mlp_dim=cfg.mlp_dim,
        grad_checkpointing=cfg.grad_checkpointing)
    if not isinstance(model, MoCo):
        raise TypeError(f"model must be a reference_trainers.moco.model.MoCo, got "
                        f"{type(model).__name__}; wrap a backbone with MoCo(backbone)")
    core = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    base_lr = cfg.lr * cfg.batch_size * world / 256  # MoCo v3: lr = base_lr * batch / 256
    optimizer = build_optimizer(cfg.optimizer, core.parameters(), lr=base_lr,
                                weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    last, wall = load_checkpoint(run_dir, model, optimizer, generator) if resume else (-1, 0.0)
    pruner = ScanPruner(len(train), 2, cfg.scan_config(), store=run_dir.store,
                        communicator=TorchCommunicator() if world > 1 else None,
                        loss_history=cfg.loss_history, resume_epoch=last)
    sampler = ScanSampler(pruner, num_replicas=world, rank=rank, seed=cfg.seed)
    if rank == 0:
        run_dir.truncate_metrics(last)
        run_dir.save_array("planted", duplicate_of=train.duplicate_of.numpy())
    row = lifecycle.epoch_loop(
        cfg, pruner, sampler, run_dir, rank=rank, world=world, wall=wall, stop_after=stop_after,
        train_epoch=lambda epoch: train_epoch(model, optimizer, sampler, pruner, train, cfg,
                                              epoch, generator, base_lr, quiet or rank != 0),
        evaluate=lambda probe: evaluate(core, train, test, cfg, probe=probe),
        checkpoint=lambda epoch, wall: save_checkpoint(run_dir, epoch, model, optimizer,
                                                       generator, wall),
        line=lambda row: epoch_line(row, accuracy=("knn_top1", "kNN")))
    return lifecycle.finish(run_dir, pruner, cfg, rank, row, headline=HEADLINE)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m reference_trainers.moco", presets=PRESETS, flags=FLAGS,
                          default_preset="cpu-fmnist-moco",
                          description="MoCo v3 pre-training with SCAN (PyTorch).")
    args = parser.parse_args(argv)
    return lifecycle.cli_main(
        lambda: config_from_args(args, presets=PRESETS, flags=FLAGS), args, run,
        lambda result: (f"linear probe top-1 {fmt(result['linear_probe_top1'])}, kNN top-1 "
                        f"{fmt(result['knn_top1'])}, pruned "
                        f"{result['realised_pruned_share']:.1%} of sample-visits, "
                        f"{fmt(result['wall_seconds'], '.0f')} s"))
