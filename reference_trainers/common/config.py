"""Training configs: typed, built by preset functions, overridden by a small set of flags.

Presets (the function's docstring gives the launch command and the expected cost):
- `cpu-fmnist`: CLIP on all 60k Fashion-MNIST training images, CPU, minutes.
- `cpu-tiny`: a 2k-image subset for smoke tests, seconds.
The SCAN knobs default to the authors' CLIP values (rho 0.30 per end, T_cos 3, T_td 0.3).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from reference_trainers.common.errors import TrainerError
from scan_core import RULE_NAMES, ScanConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    preset: str = "cpu-fmnist"
    # data
    data_dir: str | None = None
    data: str = "fmnist"                  # fmnist, or csv:PATH (image path, caption rows)
    model: str = "cpu"                    # cpu, or a GPU preset: RN50, RN101, ViT-B-32
    framework: str = "torch"              # torch, or jax (reference_trainers/jax/)
    precision: str = "fp32"               # fp32, bf16, fp16 (autocast; a grad scaler for fp16)
    compile: bool = False                 # torch.compile the model
    grad_checkpointing: bool = False      # recompute transformer blocks in the backward
    num_train: int | None = None          # class-balanced subset; None = the whole split
    num_test: int | None = None           # evaluation subset; None = all 10k test images
    mismatch_share: float = 0.0           # planted captions naming a wrong class
    duplicate_share: float = 0.0          # planted near-duplicate images
    context_length: int = 24              # tokens per caption with --tokenizer word
    tokenizer: str = "word"               # word | bpe:PATH | open_clip[:MODEL] (tokenizer_choice)
    # optimisation
    epochs: int = 12
    batch_size: int = 256
    lr: float = 2e-3
    min_lr: float = 1e-5
    lr_warmup_epochs: float = 0.5
    weight_decay: float = 0.1
    embed_dim: int = 128
    # pruning
    pruning: str = "scan"
    rho_low: float = 0.30
    rho_high: float = 0.30
    t_cos: int = 3
    warmup_threshold: float = 0.3
    min_warmup_epochs: int = 0
    max_warmup_epochs: int | None = None
    scan_warmup_epochs: int | None = None
    scope: str = "batch"
    target_rate: float | None = None
    full_tail_epochs: int = 0
    ill_every_mutation: bool = False
    loss_history: str | None = None
    # evaluation and bookkeeping
    eval_every: int = 1                   # zero-shot every k epochs (0: at the end only)
    probe_every: int = 0                  # linear probe every k epochs (0: at the end only)
    seed: int = 0
    threads: int | None = None

    def scan_config(self) -> ScanConfig:
        """The pruner's config for this run."""
        return scan_config_of(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def scan_config_of(cfg: Any) -> ScanConfig:
    """The pruner's config from any trainer config carrying the pruning fields of TrainConfig
    (pruning, rho_low, rho_high, t_cos, warmup_threshold, ..., seed, epochs)."""
    # The run's length goes in only when an option needs it, so plain runs keep the config
    # (and its store fingerprint) the paper's defaults give.
    needs_epochs = (cfg.pruning == "infobatch" or cfg.target_rate is not None
                    or cfg.full_tail_epochs > 0)
    num_epochs = cfg.epochs if needs_epochs else None
    base = ScanConfig(rho_low=cfg.rho_low, rho_high=cfg.rho_high, t_cos=cfg.t_cos,
                      warmup_threshold=cfg.warmup_threshold,
                      min_warmup_epochs=cfg.min_warmup_epochs,
                      max_warmup_epochs=cfg.max_warmup_epochs,
                      warmup_epochs=cfg.scan_warmup_epochs, scope=cfg.scope,
                      seed=cfg.seed, full_tail_epochs=cfg.full_tail_epochs,
                      ill_every_mutation=cfg.ill_every_mutation,
                      target_rate=cfg.target_rate, num_epochs=num_epochs)
    return ScanConfig.for_rule(cfg.pruning, base, num_epochs=num_epochs)


def cpu_fmnist() -> TrainConfig:
    """CLIP on Fashion-MNIST's 60k training images with SCAN, on a CPU.

        python -m reference_trainers.clip --preset cpu-fmnist --out runs/clip-fmnist

    About 12 s per full epoch on 2 cores (torch 2.13 CPU); 12 epochs with SCAN about 2.5
    minutes, evaluation included. Machines of the same kind differ: another measured 41 s
    per full epoch with 2 threads (docs/results.md, "The machine").
    """
    return TrainConfig(preset="cpu-fmnist")


def cpu_tiny() -> TrainConfig:
    """A 2k-image subset for smoke tests: seconds per epoch.

        python -m reference_trainers.clip --preset cpu-tiny --out runs/tiny
    """
    return TrainConfig(preset="cpu-tiny", num_train=2048, num_test=1000, epochs=6,
                       batch_size=128, lr=3e-3, lr_warmup_epochs=0.25, probe_every=0)


PRESETS = {"cpu-fmnist": cpu_fmnist, "cpu-tiny": cpu_tiny}
FRAMEWORKS = ("torch", "jax")

# Flags a user may set on top of a preset: (flag, field, type, help). The pruning flags are
# shared by every trainer (their configs carry the same fields); the rest are CLIP's.
PRUNING_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--rho-low", "rho_low", float, "redundant end share per batch (paper: CLIP 0.30, MoCo 0.35)"),
    ("--rho-high", "rho_high", float,
     "ill-matched end share per batch (paper: CLIP 0.30, MoCo 0.35)"),
    ("--t-cos", "t_cos", int, "mutation epochs per cycle (paper: 3)"),
    ("--warmup-threshold", "warmup_threshold", float, "T_td (paper: 0.3)"),
    ("--min-warmup-epochs", "min_warmup_epochs", int, "earliest pruning epoch"),
    ("--max-warmup-epochs", "max_warmup_epochs", int, "latest pruning start"),
    ("--scan-warmup-epochs", "scan_warmup_epochs", int, "fixed warm-up length"),
    ("--scope", "scope", str, "batch (paper) or global ranking"),
    ("--target-rate", "target_rate", float, "share of sample-visits to save"),
    ("--full-tail-epochs", "full_tail_epochs", int, "full-data epochs at the end"),
    ("--loss-history", "loss_history", str, "float16/float32: keep preparation losses"),
]

_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--data-dir", "data_dir", str, "directory of the four Fashion-MNIST IDX files"),
    ("--data", "data", str, "training data: fmnist (default) or csv:PATH (image,caption rows)"),
    ("--tokenizer", "tokenizer", str, "word (default), bpe:PATH (train_tokenizer) or open_clip"),
    ("--model", "model", str, "cpu (default) or a GPU preset: RN50, RN101, ViT-B-32"),
    ("--precision", "precision", str, "fp32 (default), bf16 or fp16 autocast"),
    ("--num-train", "num_train", int, "class-balanced training subset size"),
    ("--num-test", "num_test", int, "evaluation subset size"),
    ("--mismatch-share", "mismatch_share", float, "share of captions naming a wrong class"),
    ("--duplicate-share", "duplicate_share", float, "share of near-duplicate images"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--batch-size", "batch_size", int, "per-rank batch size"),
    ("--lr", "lr", float, "peak learning rate (AdamW)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    *PRUNING_FLAGS,
    ("--eval-every", "eval_every", int, "zero-shot every k epochs (0: end only)"),
    ("--probe-every", "probe_every", int, "linear probe every k epochs (0: end only)"),
    ("--seed", "seed", int, "seed of data, model and pruning"),
    ("--threads", "threads", int, "torch CPU threads"),
]


def build_parser(prog: str, *, presets: dict[str, Any] | None = None,
                 flags: list[tuple[str, str, Any, str]] | None = None,
                 default_preset: str = "cpu-fmnist",
                 description: str = "SCAN reference trainer.") -> argparse.ArgumentParser:
    """The command line of a trainer: --preset, --pruning, --out, --resume, --quiet,
    --stop-after, --ill-every-mutation, and `flags` (default CLIP's) over the preset's fields."""
    presets = PRESETS if presets is None else presets
    flags = _FLAGS if flags is None else flags
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--preset", choices=sorted(presets), default=default_preset)
    parser.add_argument("--pruning", choices=RULE_NAMES, default=None,
                        help="pruning rule (default scan)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--ill-every-mutation", action="store_true", default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--framework", choices=FRAMEWORKS, default=None,
                        help="torch (default) or jax (docs/jax-trainers.md)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the model")
    parser.add_argument("--grad-checkpointing", action="store_true", default=None,
                        help="recompute transformer blocks in the backward (less memory)")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="run at most this many epochs now, then exit resumable "
                             "(time-sliced or preemptible jobs; tests)")
    for flag, field, kind, text in flags:
        parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
    return parser


def config_from_args(args: argparse.Namespace, *, presets: dict[str, Any] | None = None,
                     flags: list[tuple[str, str, Any, str]] | None = None) -> Any:
    """The preset's config with every flag the user set replacing its field."""
    config = (PRESETS if presets is None else presets)[args.preset]()
    fields = [field for _, field, _, _ in (_FLAGS if flags is None else flags)] + \
        ["pruning", "ill_every_mutation", "compile", "grad_checkpointing", "framework"]
    changes = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    known = {f.name for f in dataclasses.fields(config)}
    unsupported = sorted(set(changes) - known)
    if unsupported:
        flags_named = ", ".join("--" + name.replace("_", "-") for name in unsupported)
        raise TrainerError(f"{flags_named}: not supported by the {config.preset} preset's trainer.")
    return dataclasses.replace(config, **changes)
