"""What the `--scan` patch of open_clip_train 3.3.0 calls (adapters/torch/open_clip_train.patch;
docs/open_clip.md). Five calls, each a no-op without `--scan`:

    add_args(parser)                                       # params.py: the --scan flags
    scan = attach(args, data, preprocess_fns, tokenizer, start_epoch)     # main.py
    scheduler = scan.schedule(scheduler)                   # LR by fractional epoch
    loss = scan.loss(create_loss(args))                    # ClipLoss -> ClipLossWithParts
    scan.end_epoch(epoch, writer)                          # after train_one_epoch

`attach` replaces data["train"] by `ScanTrainData` (same `dataloader` / `set_epoch` face) and
builds the `ScanPruner` with its Zarr store in the run's log folder
(`{logs}/{name}/scan.zarr`). With `--resume latest` the store resumes at the checkpoint's
epoch (`resume_epoch=start_epoch - 1`), so a run stopped anywhere continues as if it had not
stopped. Only SCAN's own settings are flags: every `ScanConfig` field `f` is `--scan-f`
(dashes for underscores); seed defaults to `--seed`, num_epochs to `--epochs`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from adapters.torch.distributed import TorchCommunicator
from adapters.torch.open_clip import ClipLossWithParts, FractionalEpochSchedule, IdSlot
from adapters.torch.open_clip_data import (ScanTrainData, ShardIndex, map_style_data,
                                           webdataset_data)
from scan_core import ScanConfig, ScanPruner
from scan_core.errors import ScanConfigError, ScanResumeError

PATCH = pathlib.Path(__file__).with_name("open_clip_train.patch")
STORE_NAME = "scan.zarr"
CORESET_NAME = "scan-coreset.json"
_DERIVED = {"seed", "num_epochs"}  # taken from open_clip's --seed and --epochs unless given


def _value(text: str) -> Any:
    """A flag's text as the JSON value it spells (0.3, 4, true, null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_args(parser: argparse.ArgumentParser) -> None:
    """--scan, and --scan-FIELD for every ScanConfig field (ScanConfig validates the values)."""
    group = parser.add_argument_group("SCAN data pruning (docs/open_clip.md)")
    group.add_argument("--scan", action="store_true",
                       help="prune the training data with SCAN (arXiv 2411.09126)")
    for field in dataclasses.fields(ScanConfig):
        group.add_argument(f"--scan-{field.name.replace('_', '-')}", dest=f"scan_{field.name}",
                           type=_value, default=None,
                           help=f"ScanConfig.{field.name} (default {field.default!r})")


def scan_config(args: argparse.Namespace) -> ScanConfig:
    """The run's ScanConfig: the authors' CLIP defaults, overridden by the flags given."""
    given = {f.name: getattr(args, f"scan_{f.name}") for f in dataclasses.fields(ScanConfig)
             if getattr(args, f"scan_{f.name}", None) is not None}
    given.setdefault("seed", int(args.seed))
    given.setdefault("num_epochs", int(args.epochs))
    return ScanConfig.clip(**given)


def refuse_unsupported(args: argparse.Namespace) -> None:
    """Options under which SCAN's per-sample CLIP loss would be wrong or unseen: refused."""
    checks = [
        (args.siglip, "--siglip", "SigLIP's sigmoid loss has no per-sample InfoNCE here"),
        ("coca" in args.model.lower(), f"--model {args.model}",
         "CoCa adds a captioning loss the per-sample parts do not cover"),
        (getattr(args, "distill", False), "--distill-model",
         "distillation's loss is not a per-sample CLIP loss"),
        (args.accum_freq > 1, f"--accum-freq {args.accum_freq}",
         "accumulation re-runs each batch's forward against cached features, so losses could "
         "not be paired with their samples once"),
        (args.horovod, "--horovod", "SCAN gathers with torch.distributed; use torchrun"),
        (args.dataset_resampled, "--dataset-resampled",
         "sampling shards with replacement has no epoch to plan"),
        (args.train_data_upsampling_factors is not None, "--train-data-upsampling-factors",
         "weighted sources are resampled"),
    ]
    for bad, flag, why in checks:
        if bad:
            raise ScanConfigError(f"--scan does not support {flag}: {why}. Run without it, or "
                                  "without --scan (docs/open_clip.md lists what is supported).")


class Disabled:
    """What `attach` returns without --scan: every hook hands its argument back unchanged."""

    def schedule(self, scheduler: Any) -> Any:
        return scheduler

    def loss(self, loss: Any) -> Any:
        return loss

    def end_epoch(self, epoch: int, writer: Any = None) -> None:
        return None


class ScanRun:
    """The SCAN side of one open_clip run: pruner, training data, loss and schedule hooks."""

    def __init__(self, args: argparse.Namespace, pruner: ScanPruner, train: ScanTrainData,
                 slot: IdSlot, index: ShardIndex | None) -> None:
        self.args, self.pruner, self.train, self.slot, self.index = args, pruner, train, slot, index
        self.master = args.rank == 0

    def schedule(self, scheduler: Any) -> Any:
        if scheduler is None:
            return None
        self.train.schedule = FractionalEpochSchedule(scheduler, self.train.nominal_batches)
        return self.train.schedule

    def loss(self, loss: Any) -> ClipLossWithParts:
        if type(loss).__name__ != "ClipLoss":
            raise ScanConfigError(
                f"--scan needs open_clip's ClipLoss, got {type(loss).__name__}: SigLIP, CoCa "
                "and distillation losses are not supported (docs/open_clip.md).")
        return ClipLossWithParts(local_loss=loss.local_loss, gather_with_grad=loss.gather_with_grad,
                                 cache_labels=loss.cache_labels, rank=loss.rank,
                                 world_size=loss.world_size, on_parts=self._record)

    def _record(self, per_sample: Any) -> None:
        ids = self.slot.take(per_sample.shape[1])
        self.pruner.record(ids, per_sample.float().cpu().numpy())

    def end_epoch(self, epoch: int, writer: Any = None) -> None:
        """Close the pruner's epoch (its store snapshot is written here, before open_clip saves
        the checkpoint) and report the epoch's pruned share in out.log and TensorBoard."""
        summary = self.pruner.end_epoch()
        if not self.master:
            return
        num_pruned = self.pruner.num_samples - summary.num_kept
        logging.info(
            f"SCAN epoch {epoch}: phase {summary.phase}, pruned {num_pruned} of "
            f"{self.pruner.num_samples} samples (share {summary.pruned_share:.6f}), "
            f"candidates {summary.num_candidates}, recorded {summary.num_recorded}, "
            f"warm-up ended at {summary.warmup_ended_at}, "
            f"realised saving {summary.realised_saving:.6f}")
        if writer is not None:
            writer.add_scalar("scan/pruned_share", summary.pruned_share, epoch)
            writer.add_scalar("scan/num_pruned", num_pruned, epoch)
            writer.add_scalar("scan/num_candidates", summary.num_candidates, epoch)
            writer.add_scalar("scan/realised_saving", summary.realised_saving, epoch)
        if epoch + 1 == self.args.epochs:
            self._write_coreset()

    def _write_coreset(self) -> None:
        """The samples outside the last D' (SPEC.md's coreset), with shard and key when the
        data are webdataset shards."""
        ids = self.pruner.coreset()
        out: dict[str, Any] = {"num_samples": self.pruner.num_samples, "ids": ids.tolist()}
        if self.index is not None:
            names = {i: k for k, i in self.index.ids.items()}
            out["keys"] = [list(names[int(i)]) for i in ids]
        folder = _run_folder(self.args)
        if folder is None:
            return
        with open(os.path.join(folder, CORESET_NAME), "w") as f:
            json.dump(out, f)


def attach(args: argparse.Namespace, data: dict[str, Any], preprocess_fns: tuple[Any, Any],
           tokenizer: Any, start_epoch: int) -> ScanRun | Disabled:
    """Build the SCAN side of the run and put its training data in data["train"]."""
    if not getattr(args, "scan", False):
        return Disabled()
    if "train" not in data:
        raise ScanConfigError("--scan needs training data (--train-data or synthetic).")
    refuse_unsupported(args)
    slot = IdSlot()
    info = data["train"]
    index = None
    if args.dataset_type == "synthetic" or not hasattr(info, "shared_epoch") \
            or info.shared_epoch is None:
        num_samples = len(info.dataloader.dataset)
    else:
        from open_clip_train.data import expand_urls
        index = ShardIndex(expand_urls(args.train_data)[0])
        num_samples = len(index)
        if args.train_num_samples is not None and args.train_num_samples != num_samples:
            logging.warning(f"SCAN: --train-num-samples {args.train_num_samples} but the shards "
                            f"hold {num_samples} samples with a caption and an image; SCAN "
                            f"plans epochs of {num_samples}.")
    pruner = _pruner(args, num_samples, start_epoch)
    if index is None:
        train = map_style_data(pruner, slot, info.dataloader.dataset, batch_size=args.batch_size,
                               rank=args.rank, world_size=args.world_size,
                               workers=args.workers, seed=args.seed)
    else:
        train = webdataset_data(pruner, slot, index, args, preprocess_fns[0], tokenizer)
    data["train"] = train
    if args.rank == 0:
        logging.info(f"SCAN: {num_samples} samples, {pruner.config}, store "
                     f"{_store_path(args)}, next epoch {pruner.next_epoch}")
    return ScanRun(args, pruner, train, slot, index)


def _run_folder(args: argparse.Namespace) -> str | None:
    """open_clip's {logs}/{name}, or None under --logs none (nothing is written then)."""
    if not args.logs or str(args.logs).lower() == "none":
        return None
    return os.path.join(args.logs, args.name)


def _store_path(args: argparse.Namespace) -> str | None:
    folder = _run_folder(args)
    return None if folder is None else os.path.join(folder, STORE_NAME)


def _pruner(args: argparse.Namespace, num_samples: int, start_epoch: int) -> ScanPruner:
    # The checkpoint says which epoch the run resumes at; the store's snapshot of the epoch
    # before it is the pruner state that checkpoint was saved with (newer ones are dropped).
    communicator = TorchCommunicator() if args.distributed else None
    store = _store_path(args)
    if store is None and start_epoch > 0:
        raise ScanResumeError("--scan resumes from the SCAN store in the run's log folder, "
                              "but --logs is none: resume with the run's --logs and --name.")
    pruner = ScanPruner(num_samples, 2, scan_config(args), store=store,
                        communicator=communicator,
                        resume_epoch=None if store is None else start_epoch - 1)
    if pruner.next_epoch != start_epoch:
        raise ScanResumeError(
            f"the SCAN store {_store_path(args)!r} resumes at epoch {pruner.next_epoch} but the "
            f"checkpoint at epoch {start_epoch}; resume with the run's own --logs and --name.")
    return pruner


def apply_patch(target: str | os.PathLike[str] | None = None, *, dry_run: bool = False) -> str:
    """Apply PATCH to the folder holding `open_clip_train/` (default: the installed one) with
    `patch -p1 --forward`, after a dry run, so a failure changes nothing. Returns patch's
    output; raises ScanConfigError with it when the patch does not apply."""
    if target is None:
        import open_clip_train

        target = pathlib.Path(open_clip_train.__file__).resolve().parents[1]
    command = ["patch", "-p1", "--forward", "-d", os.fspath(target), "-i", os.fspath(PATCH)]
    check = subprocess.run(command + ["--dry-run"], capture_output=True, text=True)
    if check.returncode != 0:
        raise ScanConfigError(
            f"{PATCH.name} does not apply to {os.fspath(target)!r} (made for open_clip_train "
            f"3.3.0; already applied?):\n{check.stdout}{check.stderr}")
    if dry_run:
        return check.stdout
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return done.stdout


def main(argv: Sequence[str] | None = None) -> int:
    """python -m adapters.torch.open_clip_train [--dry-run] [--target DIR] [--print-path]"""
    parser = argparse.ArgumentParser(prog="python -m adapters.torch.open_clip_train",
                                     description="apply the --scan patch to open_clip_train")
    parser.add_argument("--target", default=None,
                        help="folder holding open_clip_train/ (default: the installed one)")
    parser.add_argument("--dry-run", action="store_true", help="only check that it applies")
    parser.add_argument("--print-path", action="store_true", help="print the patch's path")
    args = parser.parse_args(argv)
    if args.print_path:
        print(PATCH)
        return 0
    try:
        print(apply_patch(args.target, dry_run=args.dry_run), end="")
    except ScanConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["PATCH", "Disabled", "ScanRun", "add_args", "apply_patch", "attach",
           "refuse_unsupported", "scan_config"]


if __name__ == "__main__":
    sys.exit(main())
