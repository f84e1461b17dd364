"""open_clip's flag names on the CLIP trainer, for the features it has, so a command line an
open_clip user writes runs here. Our own names keep working; giving both spellings of one
setting with different values is an error.

    open_clip              here
    --train-data PATH      --data csv:PATH (a .csv/.tsv file) or shards:SOURCE: a folder of
                           .tar, a .tar, 'DIR/{00000..00331}.tar', a '::' list, pipe:COMMAND
    --train-num-samples N  --train-num-samples N (checked against the shard index)
    --resume latest|PATH   --resume latest, or --resume RUN (a run directory, or its newest
                           checkpoint file); bare --resume = latest
    --save-frequency N     --save-frequency N: also keep every N-th epoch's checkpoint
    --val-data CSV         --val-data CSV (the same)
    --imagenet-val DIR     --imagenet-val DIR (the same)
    --workers N            --workers N (the same)
    --warmup STEPS         LR warm-up over STEPS optimiser steps of a full (unpruned) epoch
    --wd X                 --weight-decay X
    --precision amp        --precision fp16 (autocast, with a grad scaler on CUDA)
    --precision amp_bf16   --precision bf16 (autocast)
    --precision fp32       --precision fp32
    --torchcompile         --compile
    --logs DIR --name N    --out DIR/N

Refused with the alternative: --precision pure_bf16 / pure_fp16 (weights cast to half; the
trainer keeps fp32 weights under autocast). Our `--precision bf16` /
`fp16` are autocast, where open_clip's bare `bf16` / `fp16` cast the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Any

__all__ = ["add_open_clip_flags", "apply_open_clip_flags", "warmup_in_epochs",
           "with_open_clip_settings"]

PRECISIONS = {"amp": "fp16", "amp_fp16": "fp16", "amp_bfloat16": "bf16", "amp_bf16": "bf16",
              "fp32": "fp32"}
REFUSED_PRECISIONS = ("pure_bf16", "pure_fp16")


def add_open_clip_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add open_clip's spellings to a trainer's parser (build_parser's); --out becomes
    optional, as --logs with --name can name the run directory instead."""
    group = parser.add_argument_group("open_clip's names (docs/clip-trainer.md)")
    group.add_argument("--train-data", default=None,
                       help="open_clip's name: a .csv/.tsv file (= --data csv:PATH) or tar "
                            "shards (= --data shards:SOURCE): a folder, a .tar, a brace pattern "
                            "'DIR/{00000..00009}.tar', a '::' list or pipe:COMMAND")
    group.add_argument("--warmup", dest="warmup_steps", type=int, default=None,
                       help="LR warm-up in optimiser steps (of a full epoch; replaces the "
                            "preset's warm-up in epochs)")
    group.add_argument("--wd", type=float, default=None, help="= --weight-decay")
    group.add_argument("--torchcompile", action="store_true", default=None, help="= --compile")
    group.add_argument("--logs", default=None, help="with --name: the run directory LOGS/NAME")
    group.add_argument("--name", default=None, help="the run's name under --logs")
    for action in parser._actions:  # argparse has no public way to relax a required flag
        if action.dest == "out":
            action.required = False
            action.help = "run directory (or --logs DIR --name NAME)"
        if action.dest == "precision":
            action.help = ("fp32 (default), bf16 or fp16 autocast; open_clip's amp (= fp16), "
                           "amp_bf16 (= bf16) and fp32 too")
    return parser


def _train_data(value: str, parser: argparse.ArgumentParser) -> str:
    from reference_trainers.common.corpora.shard_sources import is_url_source

    if value.startswith(("csv:", "shards:")) or value == "fmnist":
        return value
    if is_url_source(value):  # webdataset URLs: checked when the index is opened
        return f"shards:{value}"
    if os.path.isdir(value):
        return f"shards:{value}"
    if value.lower().endswith((".csv", ".tsv")):
        return f"csv:{value}"
    parser.error(f"--train-data {value}: expected a .csv/.tsv file of image,caption rows or a "
                 "folder of .tar shards")
    raise AssertionError  # parser.error exits


def _merge(args: argparse.Namespace, ours: str, value: Any, flags: str,
           parser: argparse.ArgumentParser) -> None:
    if value is None:
        return
    current = getattr(args, ours, None)
    if current is not None and current != value:
        parser.error(f"{flags} name one setting: got {current!r} and {value!r}; give one")
    setattr(args, ours, value)


def apply_open_clip_flags(args: argparse.Namespace, parser: argparse.ArgumentParser
                          ) -> argparse.Namespace:
    """Translate open_clip's spellings in parsed `args` into ours (in place; returned).
    Conflicts and unsupported values exit through parser.error (status 2)."""
    if args.train_data is not None:
        _merge(args, "data", _train_data(args.train_data, parser), "--train-data and --data",
               parser)
    _merge(args, "weight_decay", args.wd, "--wd and --weight-decay", parser)
    _merge(args, "compile", args.torchcompile, "--torchcompile and --compile", parser)
    if args.precision in REFUSED_PRECISIONS:
        parser.error(f"--precision {args.precision}: this trainer keeps fp32 weights under "
                     "autocast and does not cast them to half; use --precision amp_bf16 (= bf16) "
                     "or amp (= fp16)")
    if args.precision is not None:
        args.precision = PRECISIONS.get(args.precision, args.precision)
    if args.logs is not None or args.name is not None:
        if args.logs is None or args.name is None:
            parser.error("--logs and --name go together: the run directory is LOGS/NAME")
        _merge(args, "out", os.path.join(args.logs, args.name), "--logs/--name and --out",
               parser)
    if args.out is None:
        parser.error("the run directory is required: --out DIR, or --logs DIR --name NAME")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        parser.error(f"--warmup {args.warmup_steps}: expected a number of steps >= 0")
    return args


def with_open_clip_settings(config: Any, args: argparse.Namespace) -> Any:
    """`config` with the settings only open_clip's flags reach (--warmup)."""
    if getattr(args, "warmup_steps", None) is None:
        return config
    return dataclasses.replace(config, warmup_steps=args.warmup_steps)


def warmup_in_epochs(config: Any, num_samples: int, world_size: int) -> Any:
    """`config` with `--warmup` steps turned into the schedule's fractional epochs: steps of a
    full epoch, ceil(num_samples / (batch_size * world_size)), so the warm-up lasts exactly
    that many steps while epochs are unpruned (SCAN's warm-up epochs are). Unchanged without
    --warmup."""
    if config.warmup_steps is None:
        return config
    steps_per_epoch = max(1, math.ceil(num_samples / (config.batch_size * world_size)))
    return dataclasses.replace(config, lr_warmup_epochs=config.warmup_steps / steps_per_epoch)
