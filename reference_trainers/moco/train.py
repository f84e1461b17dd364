"""MoCo v3 pre-training with SCAN, in PyTorch: `train()` at the end reads top to bottom (setup,
data, model, pruner, loop, evaluation, save); the sections above it are the steps it calls.

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

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from adapters.batching import fold_lone_last
from adapters.torch import ScanSampler, TorchCommunicator, moco_loss, record
from reference_trainers.common import evaluation, lifecycle, loop
from reference_trainers.common.eval_maths import knn_top1
from reference_trainers.common.accel import AmpSetup, place_model
from reference_trainers.common.config import build_parser, config_from_args
from reference_trainers.common.data_layer import TrainData, check_train_data
from reference_trainers.common.lifecycle import load_checkpoint, save_checkpoint
from reference_trainers.common.planted import PreparationStats
from reference_trainers.common.progress import EpochBar, knn_epoch_line
from reference_trainers.common.record_once import RecordOnce
from reference_trainers.common.schedule import cosine_lr, progress
from reference_trainers.common.skipped import SkippedLog
from reference_trainers.common.tb_report import (NullReporter, open_run_reporter,
                                                  parse_report_to)
from reference_trainers.common.workers import DecodeWorkers, raw_corpus_batches, \
    raw_stream_batches
from reference_trainers.moco import data as moco_data
from reference_trainers.common.moco_config import FLAGS, PRESETS, MocoConfig
from reference_trainers.moco.data import ImageData, build_data  # noqa: F401 (public before)
from reference_trainers.moco.model import MoCo, build_moco, moco_momentum
from reference_trainers.moco.optim import build_optimizer
from scan_core import EpochPlan, ScanPruner

HEADLINE = ("linear_probe_top1", "knn_top1")


# == 1. Data: Fashion-MNIST in memory or an image-only corpus, two crops per batch (moco/data.py)
# == 2. Evaluation: kNN and linear probe on frozen backbone features (MoCo v3's metric) ==========
def evaluate(model: MoCo, train: ImageData, test: ImageData, cfg: MocoConfig, *,
             probe: bool, device: torch.device | None = None) -> dict[str, float]:
    """kNN (and the probe) with `train` as the labelled split: the training data itself on
    Fashion-MNIST, Fashion-MNIST's training split when the run trains on a corpus."""
    preprocess = moco_data.eval_preprocess(cfg)

    def features(data: ImageData) -> torch.Tensor:
        return evaluation.extract_features(model.backbone, data.images, preprocess=preprocess,
                                           device=device)

    train_features, test_features = features(train), features(test)
    classes = getattr(train, "num_classes", 10)  # the user's --eval-folder classes
    out = {"knn_top1": knn_top1(train_features, train.labels, test_features, test.labels,
                                k=cfg.knn_k, num_classes=classes)}
    if probe:
        out["linear_probe_top1"] = evaluation.linear_probe_top1(
            train_features, train.labels, test_features, test.labels, num_classes=classes,
            seed=cfg.seed)
    return out


# == 3. One epoch of training =====================================================================
def _stream_steps(stream: Any, plan: EpochPlan, batch_size: int) -> int:
    """Batches of a stream epoch after each worker's lone last sample is folded in: every
    worker serves the same number of samples, so with one left over each of the N workers
    ends on a batch of one, and all N fold into the batch before them (one batch when each
    worker serves a single sample)."""
    per_worker = stream.samples_per_worker(plan)
    steps = stream.steps_per_rank(plan, batch_size)
    if per_worker % batch_size != 1:
        return steps
    return 1 if per_worker == 1 else steps - stream.num_workers


def _fold_stream(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, ids) batches of a stream with a lone last sample folded into the batch before."""
    held = None
    for images, _, ids in loader:
        if held is not None and len(ids) == 1:
            held = (torch.cat([held[0], images]), torch.cat([held[1], ids]))
            continue
        if held is not None:
            yield held
        held = (images, ids)
    if held is not None:
        yield held


def epoch_batches(data: TrainData, plan: EpochPlan, sampler: ScanSampler, cfg: MocoConfig,
                  generator: torch.Generator, device: torch.device,
                  decode: DecodeWorkers | None = None
                  ) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]], int]:
    """This rank's (x1, x2, ids) batches of the epoch and how many there are. Map-style data
    is served by the sampler's ids; a shard stream drops pruned samples before it reads them
    and serves the same number of samples on every rank (corpora/shards.py)."""
    if data.batch_mode == "stream":  # read and decoded in --workers processes (workers.py)
        loader = raw_stream_batches(data, plan, batch_size=cfg.batch_size, workers=cfg.workers,
                                    decode=decode)
        views = moco_data.moco_views(cfg.crop_min)
        crops = ((*moco_data.spec_two_crops(images.to(device), data.spec, generator, views),
                  ids.numpy())
                 for images, ids in _fold_stream(loader))
        return crops, _stream_steps(data, plan, cfg.batch_size)
    id_batches = fold_lone_last(list(sampler.batches(cfg.batch_size)))  # BatchNorm: >= 2
    if data.batch_mode == "corpus":  # decoded in --workers processes (workers.py)
        raw = raw_corpus_batches(data.corpus, id_batches, workers=cfg.workers, fill_bad=True,
                                 decode=decode)
        return ((*moco_data.spec_two_crops(images.to(device), data.spec, generator, data.views),
                 served.numpy()) for images, _, served in raw), len(id_batches)
    return (data.crops(ids, generator, device) for ids in id_batches), len(id_batches)


def train_epoch(model: MoCo, optimizer: torch.optim.Optimizer, sampler: ScanSampler,
                pruner: ScanPruner, data: TrainData, cfg: MocoConfig, epoch: int,
                generator: torch.Generator, base_lr: float, quiet: bool, amp: AmpSetup,
                device: torch.device, reporter: NullReporter = NullReporter(),
                decode: DecodeWorkers | None = None) -> dict[str, Any]:
    """Train one epoch of this rank's kept ids and record their per-sample losses; returns
    the epoch's steps, samples, last LR and momentum, and mean training loss."""
    plan = sampler.plan
    batches, num_batches = epoch_batches(data, plan, sampler, cfg, generator, device, decode)
    bar = EpochBar(epoch, num_batches, phase=plan.phase, kept_share=plan.keep_fraction,
                   enabled=not quiet)
    weighted = plan.weight_bits is not None
    once = RecordOnce(pruner.num_samples)
    loss_sum, samples, steps, lr, momentum = 0.0, 0, 0, 0.0, cfg.momentum
    for i, (x1, x2, ids) in enumerate(batches):
        if len(ids) < 2:  # all failed to decode (counted there), or one BatchNorm cannot take
            continue
        # LR and momentum follow fractional epochs, so shrunken (pruned) epochs still end both
        # schedules exactly at the last step (MoCo v3's adjust_learning_rate / moco_m).
        done = progress(epoch, i, num_batches)
        lr = cosine_lr(base_lr, done, cfg.epochs, cfg.lr_warmup_epochs, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        momentum = moco_momentum(cfg.momentum, done, cfg.epochs)
        weights = torch.from_numpy(plan.loss_weights(ids)).to(device) if weighted else None
        with amp.autocast():
            q1, q2, k1, k2 = model(x1, x2, momentum)
            out = moco_loss(q1.float(), q2.float(), k1.float(), k2.float(), cfg.temperature,
                            weights=weights)
        optimizer.zero_grad(set_to_none=True)
        amp.backward_step(out.loss, optimizer)
        # Refills of bad samples and a stream's top-ups repeat ids of this or earlier batches:
        # record each id once per epoch (common/record_once.py).
        unique, first = once.first_fresh(ids)
        if len(unique) == len(ids):
            record(pruner, ids, out.per_sample)
        elif len(unique):
            record(pruner, unique, out.per_sample[:, torch.from_numpy(first).to(device)])
        loss_sum += float(out.loss.detach()) * len(ids)
        reporter.step(loss=float(out.loss.detach()), lr=lr, kept_share=plan.keep_fraction,
                      samples=len(ids))
        samples += len(ids)
        steps += 1
        bar.update(i + 1, loss_sum / samples)
    return {"steps": steps, "samples": samples, "lr": lr, "momentum": momentum,
            "train_loss": loss_sum / max(samples, 1)}


# == 4. The run: setup, data, model, pruner, loop (evaluation, checkpoint), save ===============
def train(cfg: MocoConfig, out: str, *, resume: bool = False, quiet: bool = False,
          model: MoCo | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Train (or continue, with resume) the run in `out`; returns the summary.
    model: any MoCo (e.g. around another backbone); default build_moco(cfg.backbone, ...)."""
    # -- Setup: processes, threads, run directory (rank 0 writes its config).
    parse_report_to(cfg.report_to)  # an unknown reporter fails before anything is written
    rank, world, run_dir = lifecycle.open_run(cfg, out, resume=resume)
    # -- Data: the training images; the labelled split and test split kNN / the probe use.
    train_data, probe_train, test = build_data(cfg, rank=rank, world=world, run_path=out)
    check_train_data(train_data)
    planted = train_data.planted()
    # every rank checks a resumed corpus, so all refuse alike; rank 0 writes corpus.json
    moco_data.check_corpus(run_dir, train_data, resume=resume, write=rank == 0)
    # -- Model, optimiser, augmentation generator; a resume continues all three.
    torch.manual_seed(cfg.seed)  # the trainer's own process: model initialisation only
    model = model if model is not None else build_moco(
        cfg.backbone, width=cfg.width, dim=cfg.dim, mlp_dim=cfg.mlp_dim,
        grad_checkpointing=cfg.grad_checkpointing)
    if not isinstance(model, MoCo):
        raise TypeError(f"model must be a reference_trainers.moco.model.MoCo, got "
                        f"{type(model).__name__}; wrap a backbone with MoCo(backbone)")
    model, core, device, amp = place_model(model, precision=cfg.precision, compile=cfg.compile,
                                           world=world)
    base_lr = cfg.lr * cfg.batch_size * world / 256  # MoCo v3: lr = base_lr * batch / 256
    optimizer = build_optimizer(cfg.optimizer, core.parameters(), lr=base_lr,
                                weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    last, wall = load_checkpoint(run_dir, model, optimizer, generator,
                                 scaler=amp.scaler) if resume else (-1, 0.0)
    # -- Pruner and sampler.
    pruner = ScanPruner(train_data.num_samples, 2, cfg.scan, store=run_dir.store,
                        communicator=TorchCommunicator() if world > 1 else None,
                        loss_history=cfg.loss_history, resume_epoch=last)
    sampler = ScanSampler(pruner, num_replicas=world, rank=rank, seed=cfg.seed)
    reporter = open_run_reporter(cfg.report_to, run_dir, rank=rank, last_epoch=last)
    if rank == 0 and planted.any:
        run_dir.save_array("planted", duplicate_of=planted.duplicate_of)
    planted_stats = PreparationStats(pruner, duplicate_of=planted.duplicate_of)  # planted.py
    skipped = SkippedLog(run_dir, train_data, write=rank == 0)
    # -- Loop.
    decode = DecodeWorkers(cfg.workers)  # --workers processes, kept for the whole run
    log = loop.EpochLog(run_dir, rank=rank, world=world, wall_seconds=wall)
    with reporter, decode:  # closed on an error too: events flushed, workers stopped
        for epoch in log.epochs(cfg, pruner, stop_after):
            sampler.set_epoch(epoch)
            stats = train_epoch(model, optimizer, sampler, pruner, train_data, cfg, epoch,
                                generator, base_lr, quiet or rank != 0, amp, device, reporter,
                                decode)
            skipped_note = skipped(epoch, stats["samples"])
            summary = pruner.end_epoch()
            stats.update({**planted_stats(), **train_data.epoch_stats(sampler.plan)})
            log.stop_clock()
            # -- Evaluation (rank 0), the metrics row, the checkpoint (every rank: it gathers).
            evaluate_now, probe = loop.evaluation_due(cfg, epoch)
            scores = evaluate(core, probe_train, test, cfg, probe=probe, device=device) \
                if rank == 0 and evaluate_now else {}
            reporter.epoch(log.write(summary, stats, scores, line=knn_epoch_line,
                                     note=skipped_note))
            save_checkpoint(run_dir, epoch, model, optimizer, generator, log.wall_seconds,
                            scaler=amp.scaler)
    # -- Save: summary.json and the coreset.
    return loop.finish(run_dir, pruner, cfg, rank, log.row, headline=HEADLINE)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m reference_trainers.moco", presets=PRESETS, flags=FLAGS,
                          default_preset="cpu-fmnist-moco",
                          description="MoCo v3 pre-training with SCAN (PyTorch).")
    args = parser.parse_args(argv)
    return loop.run_command(train, lambda: config_from_args(args, presets=PRESETS, flags=FLAGS),
                            args, HEADLINE, shutdown=lifecycle.leave_process_group)
