"""CLIP pre-training with SCAN, in JAX (flax + optax): the PyTorch trainer's run, section by
section (reference_trainers/clip/train.py), on the same config, data and run directory;
`train()` at the end reads top to bottom, the sections above it are the steps it calls.

    python -m reference_trainers.clip --framework jax --preset cpu-fmnist --out runs/clip-jax
    python -m reference_trainers.clip --framework jax --preset cpu-tiny --out runs/tiny-jax
    python -m reference_trainers.clip --framework jax --preset cpu-tiny --out runs/tiny-jax \
        --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 0   # and 1 (processes.py)

Every epoch: the pruner plans the epoch -> adapters.jax.plan_batches serves the kept ids ->
each jitted step (state donated) computes the CLIP loss and its per-sample parts in one go ->
AsyncRecorder hands ids and per-sample losses to the pruner one step late -> at the epoch's
end the pruner persists, the trainer evaluates, logs and checkpoints (common/loop.py).
--resume continues the model, optimiser, augmentation generator and pruner from the last
completed epoch, with the same plans as a run that never stopped. Never imports torch.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import numpy as np

from reference_trainers.common import loop
from reference_trainers.common.captions import class_prompts
from reference_trainers.common.config import TrainConfig, build_parser, config_from_args
from reference_trainers.common.corpora.images import ImageSpec
from reference_trainers.common.openclip_flags import (add_open_clip_flags,
                                                      apply_open_clip_flags, warmup_in_epochs,
                                                      with_open_clip_settings)
from reference_trainers.common.pairs import ImageTextArrays, build_image_text_arrays
from reference_trainers.common.planted import PreparationStats
from reference_trainers.common.tb_report import open_run_reporter
from reference_trainers.common.progress import epoch_line
from reference_trainers.common.tokenizer import Tokenizer
from reference_trainers.common.tokenizer_choice import load_tokenizer
from reference_trainers.common.user_sets import fashion_mnist_for, no_evaluation_note
from reference_trainers.jax import evaluation
from reference_trainers.jax.augment import normalise, random_crop_flip
from reference_trainers.jax.checkpoint import save_checkpoint
from reference_trainers.jax.models import CLIP
from reference_trainers.jax.processes import (add_process_flags, host_local, start_processes,
                                              stop_processes)
from reference_trainers.jax.runtime import finish_run, open_run, run_epoch, start_run
from reference_trainers.jax.steps import (TrainState, build_optimizer, init_variables,
                                          lr_schedule, make_clip_step)
from reference_trainers.jax.user_eval import JaxUserEvaluation

HEADLINE = ("zero_shot_top1", "linear_probe_top1")


# == 1. Data =====================================================================================
def build_data(cfg: TrainConfig, run_path: Any = None
               ) -> tuple[ImageTextArrays, ImageTextArrays | None, Tokenizer]:
    """Fashion-MNIST with captions (train, with any planted noise) and its test split, as the
    PyTorch trainer builds them (common/pairs.py); or a csv:/shards: corpus as numpy batches
    (corpora/arrays.py). The test split is None when the run evaluates on the user's sets or
    on nothing (common/user_eval.fashion_mnist_for): then no Fashion-MNIST file is read."""
    splits = fashion_mnist_for(cfg)  # None: the run needs no Fashion-MNIST file
    tokenizer = load_tokenizer(cfg.tokenizer, context_length=cfg.context_length)
    if cfg.data != "fmnist":
        train = corpus_arrays(cfg, tokenizer, run_path)
    else:
        train = build_image_text_arrays(splits, train=True, num_samples=cfg.num_train,
                                        mismatch_share=cfg.mismatch_share,
                                        duplicate_share=cfg.duplicate_share, seed=cfg.seed,
                                        context_length=tokenizer.context_length,
                                        tokenizer=tokenizer)
    test = None if splits is None or cfg.imagenet_val else build_image_text_arrays(
        splits, train=False, num_samples=cfg.num_test, seed=cfg.seed,
        context_length=tokenizer.context_length, tokenizer=tokenizer)
    return train, test, tokenizer


def corpus_arrays(cfg: TrainConfig, tokenizer: Any, run_path: Any) -> Any:
    """--data csv:PATH or shards:SOURCE (local .tar) as numpy batches decoded per batch."""
    from reference_trainers.common.corpora.arrays import CorpusArrays
    from reference_trainers.common.corpora.run_index import index_for_run

    if cfg.data.startswith("csv:"):
        return CorpusArrays.from_csv(cfg.data[4:], spec=ImageSpec.cpu(), tokenizer=tokenizer)
    index = index_for_run(cfg.data[7:], run_path=run_path, shard_index=cfg.shard_index,
                          train_num_samples=cfg.train_num_samples)
    return CorpusArrays.from_shards(index, spec=ImageSpec.cpu(), tokenizer=tokenizer)


def trim_tokens(tokens: np.ndarray, eot_id: int) -> np.ndarray:
    """(N, L) tokens without the columns after the last <eot> of any row (all L when a row has
    none). Under the causal mask nothing after a row's <eot> reaches its feature, so this is
    exact; cut once for the whole split, every batch keeps one shape and the step compiles
    once (the PyTorch tower cuts per batch instead)."""
    is_eot = tokens == eot_id
    if not is_eot.any(axis=1).all():
        return tokens
    return np.ascontiguousarray(tokens[:, : int(is_eot.argmax(axis=1).max()) + 1])


def build_model(cfg: TrainConfig, tokenizer: Tokenizer) -> CLIP:
    return CLIP(vocab_size=tokenizer.vocab_size, eot_id=tokenizer.eot_id,
                context_length=tokenizer.context_length, embed_dim=cfg.embed_dim)


def init_state(model: CLIP, tx: Any, cfg: TrainConfig) -> TrainState:
    images = np.zeros((2, 28, 28, 1), np.float32)
    tokens = np.zeros((2, model.context_length), np.int64)
    variables = init_variables(model, cfg.seed, images, tokens)
    return TrainState(variables["params"], variables["batch_stats"],
                      tx.init(variables["params"]))


# == 2. Evaluation (zero-shot with a prompt ensemble; linear probe on frozen features) ============
@functools.lru_cache(maxsize=4)
def compiled_encoders(model: CLIP) -> tuple[Any, Any]:
    """Jitted evaluation faces (variables, batch) -> L2-normalised features: image, text.
    Cached per model, so a run resumed in the same process reuses the compiled code."""
    return (jax.jit(lambda v, x: model.apply(v, x, method=CLIP.encode_image)),
            jax.jit(lambda v, t: model.apply(v, t, method=CLIP.encode_text)))


def evaluate(encode: tuple[Any, Any], state: TrainState, train: ImageTextArrays,
             test: ImageTextArrays | None, tokenizer: Tokenizer, cfg: TrainConfig, *,
             probe: bool, user: JaxUserEvaluation | None = None) -> dict[str, float]:
    """The user's sets (jax/user_eval.py), then Fashion-MNIST's zero-shot (and probe) when
    `test` is set: the PyTorch trainer's evaluate, key for key."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    out = user(encode, variables) if user is not None and user.active else {}
    if test is None:
        return out
    encode_image, encode_text = encode
    classifier = evaluation.zero_shot_classifier(
        lambda tokens: encode_text(variables, tokens), class_prompts(),
        lambda texts: tokenizer.encode(texts, tokenizer.context_length))

    def features(data: ImageTextArrays) -> np.ndarray:
        return evaluation.extract_features(lambda x: encode_image(variables, x), data.images,
                                           preprocess=normalise)

    test_features = features(test)
    out["zero_shot_top1"] = evaluation.zero_shot_top1(test_features, test.labels, classifier)
    if probe and train.labels is not None:  # a corpus has no labels to probe with
        out["linear_probe_top1"] = evaluation.linear_probe_top1(
            features(train), train.labels, test_features, test.labels, num_classes=10,
            seed=cfg.seed)
    return out


# == 3. One epoch of training: runtime.run_epoch with this step and batch maker ==================
@functools.lru_cache(maxsize=4)
def compiled_step(model: CLIP, weight_decay: float, lr: float, epochs: int, warmup: float,
                  min_lr: float) -> Any:
    """The jitted CLIP step for this model, AdamW and LR schedule. Cached, so a run stopped
    and resumed in one process (tests, notebooks) reuses what XLA compiled: a pruned epoch's
    shorter last batch is padded to the batch size (runtime.run_epoch), so the step compiles
    once for full batches and once for padded ones."""
    return make_clip_step(model, build_optimizer("adamw", weight_decay=weight_decay),
                          lr_schedule(lr, epochs, warmup, min_lr))


def batch_maker(data: ImageTextArrays, tokens: np.ndarray, rng: np.random.Generator,
                share: tuple[int, int] = (0, 1), decoder: Any = None):
    """ids -> the step's host batch: augmented, normalised NHWC images and (trimmed) tokens.
    share: (process index, process count), for augmentation draws that do not depend on it.
    decoder: a corpus's corpora/decode_pool.BatchDecoder (--workers), which serves its
    decoded pixels; the augmentation draws stay here, so they do not depend on --workers."""
    def make(ids: np.ndarray) -> dict[str, Any]:
        if decoder is not None:  # a corpus: a bad sample's slot serves a good id's repeat
            ids, pixels = decoder.serve(ids)
        else:
            pixels = data.images[ids]
        return {"images": normalise(random_crop_flip(pixels, rng, share=share)),
                "tokens": tokens[ids], "ids": ids}

    return make


def open_decoder(cfg: TrainConfig, data: Any, rank: int) -> Any:
    """A corpus's BatchDecoder with --workers processes (corpora/decode_pool.py), the line
    saying where it decodes printed by process 0; None for Fashion-MNIST, held in memory,
    where --workers does nothing (said once, so an open_clip command line runs unchanged)."""
    from reference_trainers.common.corpora.decode_pool import BatchDecoder, check_worker_count

    workers = check_worker_count(cfg.workers)
    if data.batch_mode != "corpus":
        if workers and rank == 0:
            print(f"--workers {workers}: Fashion-MNIST is held in memory, nothing to decode: "
                  "the flag does nothing here (it decodes csv:/shards: corpora)", flush=True)
        return None
    decoder = BatchDecoder(data, workers)
    if workers and rank == 0:
        print(decoder.describe(), flush=True)
    return decoder


# == 4. The run: setup, data, model, pruner, loop (evaluation, checkpoint), save ===============
def train(cfg: TrainConfig, out: str, *, resume: bool = False, quiet: bool = False,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train (or continue, with resume) the run in `out`; returns the summary."""
    # -- Setup: XLA's threads, refused flags, processes, run directory.
    cfg, rank, world, run_dir = open_run(cfg, out)
    # -- Data.
    train_data, test, tokenizer = build_data(cfg, out)
    cfg = warmup_in_epochs(cfg, train_data.num_samples, world)  # --warmup STEPS, as epochs
    planted = train_data.planted()
    decoder = open_decoder(cfg, train_data, rank)  # a corpus: decoded in --workers processes
    user = JaxUserEvaluation(imagenet_val=cfg.imagenet_val, val_data=cfg.val_data,
                             classnames=cfg.classnames, spec=ImageSpec.cpu(), tokenizer=tokenizer,
                             run_path=out)
    if (no_eval := no_evaluation_note(cfg, test is not None)) and rank == 0:
        print(no_eval, flush=True)
    # -- Model, optimiser, augmentation draws: one generator, the same on every process
    # (augment.py's `share`).
    model = build_model(cfg, tokenizer)
    tx = build_optimizer("adamw", weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed * 1000)
    # -- Pruner, sampler and the replicated state (fresh, or the checkpoint's on resume).
    boxed, mesh, pruner, sampler, wall = start_run(
        cfg, run_dir, resume=resume, fresh_state=lambda: init_state(model, tx, cfg), rng=rng,
        num_samples=train_data.num_samples)
    state = boxed["state"]
    # metrics.jsonl cut back to the checkpoint, then TensorBoard (rank 0)
    reporter = open_run_reporter(cfg.report_to, run_dir, rank=rank,
                                 last_epoch=pruner.next_epoch - 1)
    if rank == 0 and planted.any:  # a corpus plants nothing
        run_dir.save_array("planted", mismatched=planted.mismatched,
                           duplicate_of=planted.duplicate_of)
    planted_stats = PreparationStats(pruner, mismatched=planted.mismatched,
                                     duplicate_of=planted.duplicate_of)
    step = compiled_step(model, cfg.weight_decay, cfg.lr, cfg.epochs, cfg.lr_warmup_epochs,
                         cfg.min_lr)
    make_batch = batch_maker(train_data, trim_tokens(train_data.tokens, tokenizer.eot_id), rng,
                             share=(rank, world), decoder=decoder)
    encode = compiled_encoders(model)
    # -- Loop.
    log = loop.EpochLog(run_dir, rank=rank, world=world, wall_seconds=wall)
    # The reporter and the --workers processes live for the whole run, closed on an error too.
    with reporter, decoder if decoder is not None else contextlib.nullcontext():
        for epoch in log.epochs(cfg, pruner, stop_after):
            sampler.set_epoch(epoch)
            id_batches = sampler.batches(cfg.batch_size)
            if decoder is not None:
                decoder.start_epoch(id_batches)
            state, stats = run_epoch(state, step, mesh, pruner, sampler.plan, id_batches,
                                     make_batch, epoch, quiet=quiet, reporter=reporter,
                                     pad_to=cfg.batch_size)
            summary = pruner.end_epoch()
            stats.update(train_data.epoch_stats(sampler.plan)  # a corpus: skipped, repeats
                         if train_data.batch_mode == "corpus" else planted_stats())
            log.stop_clock()
            # -- Evaluation and checkpoint: process 0, on its own copy of the replicated state.
            evaluate_now, probe = loop.evaluation_due(cfg, epoch)
            scores = evaluate(encode, host_local(state), train_data, test, tokenizer, cfg,
                              probe=probe, user=user) if rank == 0 and evaluate_now else {}
            reporter.epoch(log.write(summary, stats, scores, line=epoch_line))
            if rank == 0:
                save_checkpoint(run_dir, epoch, host_local(state), rng, log.wall_seconds)
    # -- Save: summary.json and the coreset, once process 0 has written every metrics row.
    return finish_run(run_dir, pruner, cfg, rank, log.row, headline=HEADLINE)


def main(argv: list[str] | None = None) -> int:
    """The command line: the PyTorch trainer's flags, open_clip's spellings of them
    (common/openclip_flags.py: --train-data, --wd, --warmup, --logs/--name, ...) and the
    process flags."""
    parser = add_process_flags(add_open_clip_flags(
        build_parser("python -m reference_trainers.clip")))
    args = apply_open_clip_flags(parser.parse_args(argv), parser)
    if (code := start_processes(args)) is not None:
        return code
    return loop.run_command(train, lambda: with_open_clip_settings(config_from_args(args), args),
                            args, HEADLINE, shutdown=stop_processes)
