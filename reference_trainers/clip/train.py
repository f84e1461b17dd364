"""CLIP pre-training with SCAN, in PyTorch: `train()` at the end reads top to bottom (setup,
data, model, pruner, loop, evaluation, save); the sections above it are the steps it calls.

    python -m reference_trainers.clip --preset cpu-fmnist --out runs/clip           # 1 process
    torchrun --nproc_per_node=2 -m reference_trainers.clip --preset cpu-tiny --out runs/ddp

Every epoch: the pruner plans the epoch -> the sampler serves this rank's kept ids -> each step
computes the CLIP loss and its per-sample parts in one go -> the ids and per-sample losses go to
the pruner -> at the epoch's end the pruner combines ranks and persists, the trainer evaluates,
logs and checkpoints. Resume with --resume: the model, optimiser and pruner continue from the
last completed epoch, with the same plans as a run that never stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from adapters.torch import ScanSampler, TorchCommunicator, clip_loss, record
from reference_trainers.clip.model import build_cpu_clip, check_clip_model
from reference_trainers.common import evaluation, lifecycle, loop
from reference_trainers.common.accel import AmpSetup, place_model
from reference_trainers.common.captions import class_prompts
from reference_trainers.common.config import TrainConfig, build_parser, config_from_args
from reference_trainers.common.data_layer import TrainData, check_train_data
from reference_trainers.common.errors import TrainerError
from reference_trainers.common.lifecycle import load_checkpoint, save_checkpoint
from reference_trainers.common.openclip_flags import (add_open_clip_flags,
                                                      apply_open_clip_flags, warmup_in_epochs,
                                                      with_open_clip_settings)
from reference_trainers.common.planted import PreparationStats
from reference_trainers.common.progress import EpochBar, epoch_line
from reference_trainers.common.record_once import RecordOnce
from reference_trainers.common.schedule import cosine_lr, progress
from reference_trainers.common.skipped import SkippedLog
from reference_trainers.common.tb_report import (NullReporter, open_run_reporter,
                                                  parse_report_to)
from reference_trainers.common.workers import DecodeWorkers, corpus_batches, stream_batches
from reference_trainers.common.user_eval import (UserEvaluation, fashion_mnist_for,
                                                 no_evaluation_note)
from reference_trainers.common.tokenizer_choice import TextTokenizer, load_tokenizer
from reference_trainers.common.torch_data import (ImageTextData, build_image_text_data,
                                                  normalise, resize_to_spec)
from scan_core import EpochPlan, ScanPruner

HEADLINE = ("zero_shot_top1", "linear_probe_top1")

# == 1. Data =====================================================================================
def build_data(cfg: TrainConfig, run_path: Any = None
               ) -> tuple[TrainData, ImageTextData | None, TextTokenizer]:
    """Training data (Fashion-MNIST with captions, or a CSV corpus of image paths and captions)
    and Fashion-MNIST's test split for evaluation (None when the run evaluates on the user's
    sets or on nothing: common/user_eval.py). The tokenizer (`--tokenizer`, default the
    word-level one at cfg.context_length) sets the context length of every token row.
    run_path: the run directory, where a shards: source keeps its key index (run_index.py)."""
    from reference_trainers.common.corpora.decode_pool import check_worker_count

    check_worker_count(cfg.workers)
    parse_report_to(cfg.report_to)
    splits = fashion_mnist_for(cfg)  # None: the run needs no Fashion-MNIST file
    tokenizer = load_tokenizer(cfg.tokenizer, context_length=cfg.context_length)
    if cfg.data.startswith("csv:"):
        from reference_trainers.common.corpora import CsvCorpus

        train = CsvCorpus(cfg.data[4:], spec=image_spec(cfg),
                          tokenizer=tokenizer.encode)
    elif cfg.data.startswith("shards:"):
        from reference_trainers.common.corpora import ShardStream
        from reference_trainers.common.corpora.run_index import index_for_run

        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        index = index_for_run(cfg.data[7:], run_path=run_path, shard_index=cfg.shard_index,
                              train_num_samples=cfg.train_num_samples)
        train = ShardStream(index, spec=image_spec(cfg),
                            tokenizer=tokenizer.encode, rank=rank, world_size=world,
                            num_workers=check_worker_count(cfg.workers), seed=cfg.seed)
    elif cfg.model != "cpu":
        raise TrainerError(f"--model {cfg.model} takes {image_spec(cfg).size}-pixel RGB images: "
                           "train it on a corpus (--data csv:PATH), not on 28x28 Fashion-MNIST.")
    elif cfg.data == "fmnist":
        train = build_image_text_data(splits, train=True, num_samples=cfg.num_train,
                                      mismatch_share=cfg.mismatch_share,
                                      duplicate_share=cfg.duplicate_share, seed=cfg.seed,
                                      context_length=tokenizer.context_length, tokenizer=tokenizer)
    else:
        raise TrainerError(f"--data must be fmnist, csv:PATH or shards:DIR, got {cfg.data!r}.")
    test = None if splits is None or cfg.imagenet_val else build_image_text_data(
        splits, train=False, num_samples=cfg.num_test, seed=cfg.seed,
        context_length=tokenizer.context_length, tokenizer=tokenizer)
    return train, test, tokenizer


def image_spec(cfg: TrainConfig):
    """How training images are decoded: 28x28 grayscale for the cpu model, the preset's
    resolution in RGB with CLIP's statistics for a GPU preset."""
    from reference_trainers.common.corpora import ImageSpec
    from reference_trainers.models import clip_preset

    return ImageSpec.cpu() if cfg.model == "cpu" else ImageSpec.gpu(clip_preset(cfg.model).image_size)


def eval_preprocess(cfg: TrainConfig):
    """Fashion-MNIST test images (uint8 (B,1,28,28)) as the model's input."""
    if cfg.model == "cpu":
        return normalise
    return resize_to_spec(image_spec(cfg))


def build_model(cfg: TrainConfig, tokenizer: TextTokenizer) -> torch.nn.Module:
    if cfg.model == "cpu":
        return build_cpu_clip(tokenizer.vocab_size, tokenizer.eot_id, tokenizer.context_length,
                              cfg.embed_dim)
    from reference_trainers.models import build_clip

    return build_clip(cfg.model, grad_checkpointing=cfg.grad_checkpointing,
                      vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length,
                      eot_id=tokenizer.eot_id)


# == 2. Evaluation (zero-shot with a prompt ensemble; linear probe on frozen features) ============
def evaluate(model: torch.nn.Module, train: TrainData, test: ImageTextData | None,
             tokenizer: TextTokenizer, cfg: TrainConfig, *, probe: bool,
             user: UserEvaluation | None = None) -> dict[str, float]:
    """Fashion-MNIST's zero-shot (and probe) when `test` is set, then the user's sets."""
    device = next(model.parameters()).device
    out = user(model, device) if user is not None and user.active else {}
    if test is None:
        return out
    model.eval()
    preprocess = eval_preprocess(cfg)
    with torch.no_grad():
        classifier = evaluation.zero_shot_classifier(
            model.encode_text, class_prompts(),
            lambda texts: torch.from_numpy(tokenizer.encode(texts)).to(device))
        test_features = evaluation.extract_features(model.encode_image, test.images,
                                                    preprocess=preprocess, device=device)
    out["zero_shot_top1"] = evaluation.zero_shot_top1(test_features, test.labels, classifier)
    probe_set = train.probe_set() if probe else None  # a probe needs labelled images
    if probe_set is not None:
        train_images, train_labels = probe_set
        train_features = evaluation.extract_features(model.encode_image, train_images,
                                                     preprocess=preprocess, device=device)
        out["linear_probe_top1"] = evaluation.linear_probe_top1(
            train_features, train_labels, test_features, test.labels, num_classes=10,
            seed=cfg.seed)
    model.train()
    return out


# == 3. One epoch of training =====================================================================
def epoch_batches(data: TrainData, plan: EpochPlan, sampler: ScanSampler, cfg: TrainConfig,
                  generator: torch.Generator, decode: DecodeWorkers | None = None
                  ) -> tuple[Iterator[tuple], int]:
    """This rank's batches of the epoch, (images float32, tokens, ids), and how many there are.
    Map-style data is served by the sampler; a shard stream drops pruned samples before it
    reads them and tops up short workers so every rank runs the same number of steps. Files
    are decoded in the run's `decode` workers (common/workers.py)."""
    if data.batch_mode == "stream":
        return (stream_batches(data, plan, batch_size=cfg.batch_size, workers=cfg.workers,
                               generator=generator, decode=decode),
                data.steps_per_rank(plan, cfg.batch_size))
    id_batches = list(sampler.batches(cfg.batch_size))
    if data.batch_mode == "corpus":  # a corpus on disk: decoded in --workers processes
        return (corpus_batches(data, id_batches, workers=cfg.workers, generator=generator,
                               decode=decode), len(id_batches))
    return ((data.batch(ids, augment=True, generator=generator) for ids in id_batches),
            len(id_batches))


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: ScanSampler,
                pruner: ScanPruner, data: TrainData, cfg: TrainConfig, epoch: int,
                generator: torch.Generator, quiet: bool, amp: AmpSetup, device: torch.device,
                reporter: NullReporter = NullReporter(), decode: DecodeWorkers | None = None
                ) -> dict[str, Any]:
    """Train one epoch of this rank's kept ids and record their per-sample losses; returns
    the epoch's steps, samples, last LR and mean training loss."""
    plan = sampler.plan
    batches, num_batches = epoch_batches(data, plan, sampler, cfg, generator, decode)
    bar = EpochBar(epoch, num_batches, phase=plan.phase, kept_share=plan.keep_fraction,
                   enabled=not quiet)
    weighted = plan.weight_bits is not None
    once = RecordOnce(pruner.num_samples)
    loss_sum, samples, steps, lr = 0.0, 0, 0, 0.0
    for i, (images, tokens, batch_ids) in enumerate(batches):
        if len(batch_ids) == 0:  # every sample of the batch failed to decode (counted there)
            continue
        lr = cosine_lr(cfg.lr, progress(epoch, i, num_batches), cfg.epochs,
                       cfg.lr_warmup_epochs, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        weights = torch.from_numpy(plan.loss_weights(batch_ids.numpy())).to(device) \
            if weighted else None
        with amp.autocast():
            image_features, text_features, logit_scale = model(images.to(device),
                                                               tokens.to(device))
            out = clip_loss(image_features.float(), text_features.float(), logit_scale.float(),
                            weights=weights)
        optimizer.zero_grad(set_to_none=True)
        amp.backward_step(out.loss, optimizer)
        # A stream's top-ups and refills repeat ids of this or earlier batches: record each
        # id once per epoch (common/record_once.py).
        unique, first = once.first_fresh(batch_ids.numpy())
        if len(unique):
            record(pruner, unique, out.per_sample[:, torch.from_numpy(first)])
        loss_sum += float(out.loss.detach()) * len(batch_ids)
        reporter.step(loss=float(out.loss.detach()), lr=lr, kept_share=plan.keep_fraction,
                      samples=len(batch_ids))
        samples += len(batch_ids)
        steps += 1
        bar.update(i + 1, loss_sum / samples)
    return {"steps": steps, "samples": samples, "lr": lr, "train_loss": loss_sum / max(samples, 1)}


# == 4. The run: setup, data, model, pruner, loop (evaluation, checkpoint), save ===============
def train(cfg: TrainConfig, out: str, *, resume: bool = False, quiet: bool = False,
          model: torch.nn.Module | None = None, stop_after: int | None = None,
          data: tuple[TrainData, ImageTextData | None, TextTokenizer] | None = None
          ) -> dict[str, Any]:
    """Train (or continue, with resume) the run in `out`; returns the summary.
    data: (train, test, tokenizer) to use instead of build_data(cfg) (e.g. a subset of the
    training data: experiments/worker.py)."""
    # -- Setup: processes, threads, run directory (rank 0 writes its config).
    rank, world, run_dir = lifecycle.open_run(cfg, out, resume=resume)
    # -- Data.
    train_data, test, tokenizer = build_data(cfg, out) if data is None else data
    check_train_data(train_data)
    planted = train_data.planted()
    user = UserEvaluation(imagenet_val=cfg.imagenet_val, val_data=cfg.val_data,
                          classnames=cfg.classnames, spec=image_spec(cfg), tokenizer=tokenizer)
    if (no_eval := no_evaluation_note(cfg, test is not None)) and rank == 0:
        print(no_eval, flush=True)
    # -- Model, optimiser, augmentation generator; a resume continues all three.
    torch.manual_seed(cfg.seed)  # the trainer's own process: model initialisation only
    model = model if model is not None else build_model(cfg, tokenizer)
    check_clip_model(model)
    model, core, device, amp = place_model(model, precision=cfg.precision, compile=cfg.compile,
                                           world=world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    last, wall = load_checkpoint(run_dir, model, optimizer, generator,
                                 scaler=amp.scaler) if resume else (-1, 0.0)
    # -- Pruner and sampler.
    cfg = warmup_in_epochs(cfg, train_data.num_samples, world)  # --warmup STEPS, as epochs
    pruner = ScanPruner(train_data.num_samples, 2, cfg.scan, store=run_dir.store,
                        communicator=TorchCommunicator() if world > 1 else None,
                        loss_history=cfg.loss_history, resume_epoch=last)
    sampler = ScanSampler(pruner, num_replicas=world, rank=rank, seed=cfg.seed)
    reporter = open_run_reporter(cfg.report_to, run_dir, rank=rank, last_epoch=last)
    if rank == 0 and planted.any:
        run_dir.save_array("planted", mismatched=planted.mismatched,
                           duplicate_of=planted.duplicate_of)
    # After each preparation epoch: D''s churn and how well it finds planted noise (planted.py).
    planted_stats = PreparationStats(pruner, mismatched=planted.mismatched,
                                     duplicate_of=planted.duplicate_of)
    skipped = SkippedLog(run_dir, train_data, write=rank == 0)
    # -- Loop.
    decode = DecodeWorkers(cfg.workers)  # --workers processes, kept for the whole run
    log = loop.EpochLog(run_dir, rank=rank, world=world, wall_seconds=wall)
    with reporter, decode:  # closed on an error too: events flushed, workers stopped
        for epoch in log.epochs(cfg, pruner, stop_after):
            sampler.set_epoch(epoch)
            stats = train_epoch(model, optimizer, sampler, pruner, train_data, cfg, epoch,
                                generator, quiet or rank != 0, amp, device, reporter, decode)
            skipped_note = skipped(epoch, stats["samples"])
            summary = pruner.end_epoch()
            # A corpus: its bad samples (and a stream's repeats); Fashion-MNIST: planted noise.
            stats.update(train_data.epoch_stats(sampler.plan) if train_data.batch_mode != "memory"
                         else planted_stats())
            log.stop_clock()
            # -- Evaluation (rank 0), the metrics row, the checkpoint (every rank: it gathers).
            evaluate_now, probe = loop.evaluation_due(cfg, epoch)
            scores = evaluate(core, train_data, test, tokenizer, cfg, probe=probe, user=user) \
                if rank == 0 and evaluate_now else {}
            reporter.epoch(log.write(summary, stats, scores, line=epoch_line, note=skipped_note))
            save_checkpoint(run_dir, epoch, model, optimizer, generator, log.wall_seconds,
                            scaler=amp.scaler)
    # -- Save: summary.json and the coreset.
    return loop.finish(run_dir, pruner, cfg, rank, log.row, headline=HEADLINE)


def main(argv: list[str] | None = None) -> int:
    parser = add_open_clip_flags(build_parser("python -m reference_trainers.clip"))
    args = apply_open_clip_flags(parser.parse_args(argv), parser)
    return loop.run_command(train, lambda: with_open_clip_settings(config_from_args(args), args),
                            args, HEADLINE, shutdown=lifecycle.leave_process_group)
