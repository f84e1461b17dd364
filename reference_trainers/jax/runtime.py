"""What the JAX CLIP and MoCo trainers share around their step: the flags they refuse, the
epoch's plan and id batches, and the loop over one epoch's steps.

`adapters.jax.PlanSampler` (re-exported here) gives common/loop.epoch_loop the `set_epoch` /
`plan` face of the torch ScanSampler, with this process's ids from adapters.jax.plan_batches
(DistributedSampler's arithmetic over the kept ids, shuffled by numpy's PCG64 with
(seed, epoch); rank and world are `jax.process_index()` / `jax.process_count()`, see
processes.py), a lone last id folded in for BatchNorm (`fold_single`). `run_epoch` runs the steps:
host batch -> padded to the full batch size if short (`adapters.jax.pad_batch`) -> `place_batch`
-> jitted step (state donated) -> `AsyncRecorder.push` (one step late, so the host never waits
for the step it just queued), with the EpochBar's loss also read one step late.

Why pad: jit compiles once per batch shape, and a pruned epoch's last batch has a new length
almost every epoch (its kept count changes), so without padding every pruned epoch paid one
compilation (seconds on a CPU, more for a large model on an accelerator). Padded with copies of
real rows and a `valid` mask that BatchNorm and the loss honour, the last batch computes what
the short batch computed, to float rounding, in the full batch's shape. Full batches carry no
mask and run exactly as before; a run compiles at most two training steps (full, padded), and
a third when a lone last id is folded into the batch before it (B + 1 rows).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from adapters.jax import AsyncRecorder, JaxCommunicator, PlanSampler, data_mesh, pad_batch
from reference_trainers.common.errors import TrainerError
from reference_trainers.common.loop import RunConfig, finish
from reference_trainers.common.progress import EpochBar
from reference_trainers.common.rundir import RunDir
from reference_trainers.common.schedule import progress
from reference_trainers.common.tb_report import NullReporter, parse_report_to
from reference_trainers.jax.checkpoint import load_checkpoint
from reference_trainers.jax.processes import agreed, barrier, check_process_count
from reference_trainers.jax.steps import place_batch, replicate
from scan_core import ScanPruner

__all__ = ["PlanSampler", "check_jax_config", "limit_threads", "run_epoch"]


def open_run(cfg: RunConfig, out: str) -> tuple[Any, int, int, RunDir]:
    """A JAX run's first steps (common/lifecycle.open_run's twin): XLA's threads (before
    anything starts JAX's backend), the flags refused, this process's rank and the process
    count, the run directory. -> (cfg with framework="jax", rank, world, run directory)."""
    limit_threads(cfg.threads)
    return check_jax_config(cfg), jax.process_index(), jax.process_count(), RunDir(out)


def check_jax_config(cfg: Any) -> Any:
    """Refuse what only the PyTorch trainers do, naming the flag; return cfg with
    framework="jax" (so config.json says which trainer wrote the run)."""
    refused = []
    if getattr(cfg, "model", "cpu") != "cpu":
        refused.append(f"--model {cfg.model} (the JAX trainers build the cpu preset's model "
                       "only; the GPU presets are PyTorch's: drop --framework jax)")
    if getattr(cfg, "backbone", "resnet") not in ("resnet", "vit-tiny"):
        refused.append(f"--backbone {cfg.backbone} (the JAX MoCo trainer builds resnet and "
                       "vit-tiny; the paper's ViT-S / ViT-B presets are PyTorch's)")
    for field, flag in (("compile", "--compile"), ("grad_checkpointing", "--grad-checkpointing")):
        if getattr(cfg, field, False):
            refused.append(f"{flag} (a torch option; XLA compiles every JAX step anyway)")
    if getattr(cfg, "precision", "fp32") != "fp32":
        refused.append(f"--precision {cfg.precision} (the JAX trainers train in fp32)")
    data = getattr(cfg, "data", "fmnist")
    clip = getattr(cfg, "tokenizer", None) is not None  # MoCo's config has no tokenizer
    kinds = ("csv:", "shards:") if clip else ("folder:", "csv:", "shards:")
    if data != "fmnist" and not data.startswith(kinds):
        refused.append(f"--data {cfg.data} (the JAX CLIP trainer takes fmnist, csv:PATH and "
                       "shards:SOURCE; the JAX MoCo trainer also folder:DIR)")
    parse_report_to(cfg.report_to)  # an unknown reporter fails before anything is written
    # a bad --workers count (e.g. -2) fails before any data is read
    from reference_trainers.common.corpora.decode_pool import check_worker_count

    check_worker_count(getattr(cfg, "workers", None))
    if refused:
        raise TrainerError("not supported with --framework jax: " + "; ".join(refused) + ".")
    return dataclasses.replace(cfg, framework="jax")


class FirstOfBatch:
    """The pruner, recording only the first appearance of an id within a batch. A corpus
    serves a bad sample's slot as a repeat of a good id of the same batch (corpora/arrays.py);
    the pruner takes one loss per id, and the repeat is the same sample. Filtered on the host
    with this process's own ids and loss rows, so it holds with several processes."""

    def __init__(self, pruner: ScanPruner) -> None:
        self._pruner = pruner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pruner, name)

    def record(self, ids: np.ndarray, losses: np.ndarray) -> Any:
        _, first = np.unique(ids, return_index=True)
        if len(first) < len(ids):
            keep = np.sort(first)
            ids, losses = ids[keep], losses[..., keep]
        return self._pruner.record(ids, losses)


def limit_threads(threads: int | None) -> None:
    """--threads 1: make XLA's CPU backend single-threaded. Takes effect only if JAX's backend
    has not started yet in this process (XLA reads XLA_FLAGS once); other values use every
    core, XLA's default."""
    flag = "--xla_cpu_multi_thread_eigen=false"
    if threads == 1 and flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


def run_epoch(state: Any, step: Callable, mesh: Any, pruner: Any, plan: Any,
              id_batches: list[np.ndarray], make_batch: Callable[[np.ndarray], dict[str, Any]],
              epoch: int, *, quiet: bool, extra: Iterable[str] = (),
              reporter: NullReporter | None = None,
              pad_to: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Run one epoch's steps; returns (state, stats): steps, samples (of the global batches,
    every process's), train_loss (mean over them), lr and the `extra` metrics (e.g. momentum)
    of the last step. Under several processes `id_batches` are this process's; the step's loss
    is the global batch's, and each process records its own rows. `reporter`
    (common/tb_report.py) gets each step's loss, lr and global batch size when the loop reads
    them, one step late. `pad_to` (the per-process batch size): a shorter batch is padded to
    it with a `valid` mask (module docstring), so the step keeps one shape."""
    reporter = reporter if reporter is not None else NullReporter()
    world = jax.process_count()
    bar = EpochBar(epoch, len(id_batches), phase=plan.phase, kept_share=plan.keep_fraction,
                   enabled=not quiet and jax.process_index() == 0)
    weighted = plan.weight_bits is not None
    recorder = AsyncRecorder(pruner)
    recorder.pruner = FirstOfBatch(pruner)  # a corpus's repeats are recorded once
    losses: list[tuple[Any, Any, int]] = []  # (loss, lr, global batch size) per step
    loss_sum, samples, metrics = 0.0, 0, {}
    for i, ids in enumerate(id_batches):
        batch = make_batch(ids)
        ids = batch.pop("ids", ids)  # a corpus serves a good id's repeat for a bad one
        batch["progress"] = np.float32(progress(epoch, i, len(id_batches)))
        if weighted:
            batch["weights"] = np.asarray(plan.loss_weights(ids), np.float32)
        valid = None
        if pad_to is not None and len(ids) < pad_to:
            batch, valid = pad_batch(batch, pad_to)
            batch["valid"] = valid
        state, metrics = step(state, place_batch(mesh, batch))
        recorder.push(ids, metrics["per_sample"], valid=valid)
        # equal lengths on every process
        losses.append((metrics["loss"], metrics["lr"], len(ids) * world))
        if len(losses) > 1:  # the previous step's loss: done, or nearly, so no stall
            loss, lr, count = losses[-2]
            loss_sum, samples = loss_sum + float(loss) * count, samples + count
            bar.update(i, loss_sum / samples)
            reporter.step(loss=float(loss), lr=float(lr), kept_share=plan.keep_fraction,
                          samples=count)
    recorder.flush()
    if losses:
        loss, lr, count = losses[-1]
        loss_sum, samples = loss_sum + float(loss) * count, samples + count
        bar.update(len(id_batches), loss_sum / samples)
        reporter.step(loss=float(loss), lr=float(lr), kept_share=plan.keep_fraction,
                      samples=count)
    stats = {"steps": len(id_batches), "samples": samples,
             "lr": float(metrics["lr"]) if metrics else 0.0,
             **{key: float(metrics[key]) for key in extra if key in metrics},
             "train_loss": loss_sum / max(samples, 1)}
    return state, stats


def start_run(cfg: Any, run_dir: RunDir, *, resume: bool, fresh_state: Callable[[], Any],
              rng: np.random.Generator, num_samples: int
              ) -> tuple[dict[str, Any], Any, ScanPruner, PlanSampler, float]:
    """What both JAX trainers do before their first epoch. On every process, agreed (what may
    fail is checked everywhere): the process count, the config (written by process 0), and
    the state (`fresh_state()`, or the last checkpoint with `rng`'s state on resume); then
    the state replicated over every device of every process, the pruner (resumed at the
    checkpoint's epoch: `pruner.next_epoch - 1` is the checkpoint's, what
    tb_report.open_run_reporter cuts metrics.jsonl back to) and the plan sampler. Returns ({"state": replicated state}, mesh, pruner, sampler, wall seconds so far)."""
    rank = jax.process_index()

    def start() -> tuple[Any, int, float]:
        check_process_count(run_dir.store, resume)
        if rank == 0:
            run_dir.write_config(cfg.to_dict(), resume=resume)
        return load_checkpoint(run_dir, fresh_state(), rng) if resume \
            else (fresh_state(), -1, 0.0)

    state, last, wall = agreed("starting the run", start)
    mesh = data_mesh()  # every device of every process
    pruner = ScanPruner(num_samples, 2, cfg.scan, store=run_dir.store,
                        communicator=JaxCommunicator(), loss_history=cfg.loss_history,
                        resume_epoch=last)
    sampler = PlanSampler(pruner, cfg.seed)
    return {"state": replicate(mesh, state)}, mesh, pruner, sampler, wall


def finish_run(run_dir: RunDir, pruner: ScanPruner, cfg: RunConfig, rank: int,
               last_row: dict[str, Any], *, headline: tuple[str, ...]) -> dict[str, Any]:
    """What both JAX trainers do after their last epoch: wait until process 0 has written
    every metrics row, then common/loop.finish (the summary it reads them for)."""
    barrier("epochs done")
    return finish(run_dir, pruner, cfg, rank, last_row, headline=headline)
