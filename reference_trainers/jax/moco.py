"""MoCo v3 pre-training with SCAN, in JAX (flax + optax): the PyTorch trainer's run
(reference_trainers/moco/train.py) on the same config, data and run directory; `train()` at
the end reads top to bottom, the sections above it are the steps it calls.

    python -m reference_trainers.moco --framework jax --preset cpu-fmnist-moco --out runs/moco-jax
    python -m reference_trainers.moco --framework jax --preset cpu-tiny-moco --out runs/tiny-jax
    python -m reference_trainers.moco --framework jax --preset cpu-tiny-moco --out runs/own \
        --data 'shards:DIR/{00000..00001}.tar' --eval-folder VALDIR --report-to tensorboard
    python -m reference_trainers.moco --framework jax --preset cpu-tiny-moco --out runs/tiny-jax \
        --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 0   # and 1 (processes.py)

Every epoch: the pruner plans the epoch -> adapters.jax.plan_batches serves the kept ids (a
lone last id folded into the batch before: BatchNorm needs two samples) -> each jitted step
(state donated) draws nothing itself: the host makes two numpy crops per image; the step
updates the momentum encoder, computes the keys and MoCo v3's symmetric loss with its two
per-sample views ctr(q1, k2), ctr(q2, k1) -> AsyncRecorder hands them to the pruner -> at the
epoch's end the pruner persists, the trainer evaluates (kNN, linear probe on frozen backbone
features, on Fashion-MNIST or the user's --eval-folder), logs (metrics.jsonl, skipped.jsonl,
--report-to tensorboard) and checkpoints (common/loop.py). The data: jax/moco_data.py.
Never imports torch.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import numpy as np

from reference_trainers.common import loop
from reference_trainers.common.config import build_parser, config_from_args
from reference_trainers.common.corpus_record import check_corpus
from reference_trainers.common.moco_config import FLAGS, PRESETS, MocoConfig
from reference_trainers.common.planted import PreparationStats
from reference_trainers.common.progress import knn_epoch_line
from reference_trainers.common.skipped import SkippedLog
from reference_trainers.common.tb_report import open_run_reporter
from reference_trainers.common.user_sets import no_moco_evaluation_note
from reference_trainers.common.views import CropView, moco_view_pair
from reference_trainers.jax import evaluation
from reference_trainers.jax.augment import normalise, two_crops
from reference_trainers.jax.checkpoint import save_checkpoint
from reference_trainers.jax.moco_data import (CorpusImages, Images, build_data, build_eval_sets,
                                             open_decoder)
from reference_trainers.jax.moco_models import MoCoNet, encoder_of
from reference_trainers.jax.processes import (add_process_flags, host_local, start_processes,
                                              stop_processes)
from reference_trainers.jax.runtime import finish_run, open_run, run_epoch, start_run
from reference_trainers.jax.steps import (TrainState, build_optimizer, init_variables,
                                          lr_schedule, make_moco_step, momentum_schedule)

HEADLINE = ("linear_probe_top1", "knn_top1")


# == 1. Data: Fashion-MNIST or an image-only corpus, two crops per batch (jax/moco_data.py) =====
def crop_views(cfg: MocoConfig) -> tuple[CropView, CropView]:
    return moco_view_pair(CropView, cfg.crop_min)


def build_model(cfg: MocoConfig) -> MoCoNet:
    return MoCoNet(backbone=cfg.backbone, width=cfg.width, dim=cfg.dim, mlp_dim=cfg.mlp_dim)


def init_state(model: MoCoNet, tx: Any, seed: int) -> TrainState:
    """Fresh parameters; the momentum encoder starts as an exact copy of the base encoder."""
    variables = init_variables(model, seed, np.zeros((2, 28, 28, 1), np.float32))
    params, stats = variables["params"], variables["batch_stats"]
    return TrainState(params, stats, tx.init(params),
                      ema_params=jax.tree.map(np.array, params["base"]),
                      ema_batch_stats=jax.tree.map(np.array, stats["base"]))


# == 2. Evaluation: kNN and linear probe on frozen backbone features (MoCo v3's metric) ==========
@functools.lru_cache(maxsize=4)
def compiled_features(model: MoCoNet) -> Any:
    """Jitted (variables, batch) -> the base backbone's features, BatchNorm in eval mode."""
    return jax.jit(lambda v, x: model.apply(v, x, method=MoCoNet.features))


def evaluate(model: MoCoNet, state: TrainState, train: Any, test: Any, cfg: MocoConfig, *,
             probe: bool) -> dict[str, float]:
    """kNN (and the probe) with `train` as the labelled bank: Fashion-MNIST's training data, or
    the user's --eval-folder split (jax/moco_data.build_eval_sets), over its classes."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    encode = compiled_features(model)

    def features(data: Any) -> np.ndarray:
        return evaluation.extract_features(lambda x: encode(variables, x), data.images,
                                           preprocess=normalise)

    train_features, test_features = features(train), features(test)
    classes = train.num_classes
    out = {"knn_top1": evaluation.knn_top1(train_features, train.labels, test_features,
                                           test.labels, k=cfg.knn_k, num_classes=classes)}
    if probe:
        out["linear_probe_top1"] = evaluation.linear_probe_top1(
            train_features, train.labels, test_features, test.labels, num_classes=classes,
            seed=cfg.seed)
    return out


# == 3. One epoch of training: runtime.run_epoch with this step and batch maker ==================
@functools.lru_cache(maxsize=4)
def compiled_step(model: MoCoNet, optimizer: str, weight_decay: float, base_lr: float,
                  epochs: int, warmup: float, min_lr: float, momentum: float,
                  temperature: float) -> Any:
    """The jitted MoCo step. Cached, so a run resumed in one process reuses what XLA compiled
    (full batches; shorter last batches padded to the batch size; a folded B + 1)."""
    return make_moco_step(model, encoder_of(model),
                          build_optimizer(optimizer, weight_decay=weight_decay),
                          lr_schedule(base_lr, epochs, warmup, min_lr),
                          momentum_schedule(momentum, epochs), temperature)


def batch_maker(data: Images | CorpusImages, views: tuple[CropView, CropView],
                rng: np.random.Generator, share: tuple[int, int] = (0, 1), decoder: Any = None):
    """ids -> two augmented crops; share: (process index, process count), augment.py.
    decoder: a corpus's corpora/decode_pool.BatchDecoder (jax/moco_data.open_decoder), which
    serves the batch decoded (here or in --workers processes) with a bad id's slot as a good
    id's repeat ("ids"); the crops' draws stay here, so they do not depend on --workers."""
    def make(ids: np.ndarray) -> dict[str, Any]:
        if decoder is None:
            return dict(zip(("x1", "x2"), two_crops(data.images[ids], rng, views=views,
                                                    share=share)))
        ids, pixels = decoder.serve(ids)
        x1, x2 = two_crops(pixels, rng, views=views, share=share)
        return {"x1": x1, "x2": x2, "ids": ids}

    return make


# == 4. The run: setup, data, model, pruner, loop (evaluation, checkpoint), save ===============
def train(cfg: MocoConfig, out: str, *, resume: bool = False, quiet: bool = False,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train (or continue, with resume) the run in `out`; returns the summary."""
    # -- Setup: XLA's threads, refused flags, processes, run directory.
    cfg, rank, world, run_dir = open_run(cfg, out)
    # -- Data: the training images; kNN's bank / the probe's training set and the scored set
    # (Fashion-MNIST's, the user's --eval-folder, or none: jax/moco_data.py).
    train_data = build_data(cfg, out)
    eval_sets = build_eval_sets(cfg, train_data)
    if (no_eval := no_moco_evaluation_note(cfg, eval_sets is not None)) and rank == 0:
        print(no_eval, flush=True)
    planted = train_data.planted()
    decoder = open_decoder(cfg, train_data, rank)  # a corpus: decoded in --workers processes
    # -- Model, optimiser (MoCo v3: lr = base_lr * global batch / 256, as in torch),
    # augmentation draws: one generator, the same on every process (augment.py's `share`).
    model = build_model(cfg)
    base_lr = cfg.lr * cfg.batch_size * world / 256
    tx = build_optimizer(cfg.optimizer, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed * 1000)
    # -- Pruner, sampler and the replicated state (fresh, or the checkpoint's on resume); a
    # resume first refuses a corpus whose file list changed (corpus.json), before its store,
    # on every process alike.
    if resume:
        check_corpus(run_dir, train_data, resume=True, write=False)
    boxed, mesh, pruner, sampler, wall = start_run(
        cfg, run_dir, resume=resume, fresh_state=lambda: init_state(model, tx, cfg.seed),
        rng=rng, num_samples=train_data.num_samples)
    state = boxed["state"]
    # metrics.jsonl cut back to the checkpoint, then TensorBoard (rank 0)
    reporter = open_run_reporter(cfg.report_to, run_dir, rank=rank,
                                 last_epoch=pruner.next_epoch - 1)
    if rank == 0:
        check_corpus(run_dir, train_data, resume=resume)  # corpus.json, corpus_labels.npz
        if planted.any:  # a corpus plants nothing
            run_dir.save_array("planted", duplicate_of=planted.duplicate_of)
    planted_stats = PreparationStats(pruner, duplicate_of=planted.duplicate_of)
    skipped = SkippedLog(run_dir, train_data, write=rank == 0)  # skipped.jsonl
    step = compiled_step(model, cfg.optimizer, cfg.weight_decay, base_lr, cfg.epochs,
                         cfg.lr_warmup_epochs, cfg.min_lr, cfg.momentum, cfg.temperature)
    make_batch = batch_maker(train_data, crop_views(cfg), rng, share=(rank, world),
                             decoder=decoder)
    # -- Loop.
    log = loop.EpochLog(run_dir, rank=rank, world=world, wall_seconds=wall)
    # The reporter and the --workers processes live for the whole run, closed on an error too.
    with reporter, decoder if decoder is not None else contextlib.nullcontext():
        for epoch in log.epochs(cfg, pruner, stop_after):
            sampler.set_epoch(epoch)
            id_batches = sampler.batches(cfg.batch_size, fold_single=True)
            if decoder is not None:
                decoder.start_epoch(id_batches)  # decoded ahead by --workers processes
            state, stats = run_epoch(state, step, mesh, pruner, sampler.plan, id_batches,
                                     make_batch, epoch, quiet=quiet, extra=("momentum",),
                                     reporter=reporter, pad_to=cfg.batch_size)
            skipped_note = skipped(epoch, stats["samples"])
            summary = pruner.end_epoch()
            stats.update({**planted_stats(), **train_data.epoch_stats(sampler.plan)})
            log.stop_clock()
            # -- Evaluation and checkpoint: process 0, on its copy of the replicated state.
            evaluate_now, probe = loop.evaluation_due(cfg, epoch)
            scores = evaluate(model, host_local(state), *eval_sets, cfg, probe=probe) \
                if rank == 0 and evaluate_now and eval_sets is not None else {}
            reporter.epoch(log.write(summary, stats, scores, line=knn_epoch_line,
                                     note=skipped_note))
            if rank == 0:
                save_checkpoint(run_dir, epoch, host_local(state), rng, log.wall_seconds)
    # -- Save: summary.json and the coreset, once process 0 has written every metrics row.
    return finish_run(run_dir, pruner, cfg, rank, log.row, headline=HEADLINE)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m reference_trainers.moco", presets=PRESETS, flags=FLAGS,
                          default_preset="cpu-fmnist-moco",
                          description="MoCo v3 pre-training with SCAN (JAX).")
    args = add_process_flags(parser).parse_args(argv)
    if (code := start_processes(args)) is not None:
        return code
    return loop.run_command(train, lambda: config_from_args(args, presets=PRESETS, flags=FLAGS),
                            args, HEADLINE, shutdown=stop_processes)
