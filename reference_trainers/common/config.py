"""Training configs: typed, built by preset functions, overridden by a small set of flags.

Presets (the function's docstring gives the launch command and the expected cost):
- `cpu-fmnist`: CLIP on all 60k Fashion-MNIST training images, CPU, minutes.
- `cpu-tiny`: a 2k-image subset for smoke tests, seconds.

SCAN's settings live in one place: the config's `scan` field, a `scan_core.ScanConfig`
(default the authors' CLIP values, `ScanConfig.clip()`: rho 0.30 per end, T_cos 3, T_td 0.3).
Its `seed` and `num_epochs` are the run's (`seed`, `epochs`), filled in when the config is
built, so `config.scan` is exactly what the pruner gets. The pruning flags (`PRUNING_FLAGS`) are
derived from ScanConfig's fields (name, type, choices, help), and `with_settings` and
`to_dict` speak the flat names of the command line and of config.json (`rho_low`,
`scan_warmup_epochs`, `pruning`), so run directories of earlier versions still resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any

from reference_trainers.common.errors import TrainerError
from reference_trainers.common.resume_flag import RESUME_HELP, resolve_resume
from scan_core import RULE_NAMES, ScanConfig


# ScanConfig fields a trainer exposes as flags (and as flat keys of config.json), in order.
# seed and num_epochs are the run's; rule and mode are named together by --pruning.
SCAN_FLAG_FIELDS = ("rho_low", "rho_high", "t_cos", "warmup_threshold", "min_warmup_epochs",
                    "max_warmup_epochs", "warmup_epochs", "scope", "target_rate",
                    "full_tail_epochs", "ill_every_mutation", "ill_persistence", "retire_share")
# Flat names that differ from the field's (kept so command lines and run directories written
# before the settings moved into ScanConfig mean the same).
_FLAT_NAMES = {"warmup_epochs": "scan_warmup_epochs"}
SCAN_SETTINGS = ("pruning", *(_FLAT_NAMES.get(f, f) for f in SCAN_FLAG_FIELDS))


def flat_name(field: str) -> str:
    """The flat (command-line / config.json) name of a ScanConfig field."""
    return _FLAT_NAMES.get(field, field)


def rule_name(scan: ScanConfig) -> str:
    """The --pruning name (scan_core.RULE_NAMES) of a config: `ScanConfig.for_rule` inverted."""
    if scan.rule == "scan" and scan.mode != "both":
        return {"redundant": "redundant", "ill_matched": "ill"}[scan.mode]
    return scan.rule


def run_scan_config(scan: ScanConfig, *, seed: int, epochs: int) -> ScanConfig:
    """`scan` with the run's seed and, only when an option needs it (a target rate, full-data
    tail epochs, InfoBatch), the run's length: plain runs keep the config (and its store
    fingerprint) the paper's defaults give."""
    needs_epochs = (scan.rule == "infobatch" or scan.target_rate is not None
                    or scan.full_tail_epochs > 0)
    return scan.replace(seed=seed, num_epochs=epochs if needs_epochs else None)


@dataclasses.dataclass(frozen=True)
class ScanSettings:
    """What every trainer config holds of SCAN: `scan` and the loss-history option. A base of
    TrainConfig and MocoConfig (which declare `seed` and `epochs`)."""

    scan: ScanConfig = ScanConfig.clip()
    loss_history: str | None = None       # float16 / float32: keep preparation losses

    def __post_init__(self) -> None:
        if not isinstance(self.scan, ScanConfig):
            raise TrainerError(f"scan must be a scan_core.ScanConfig, got "
                               f"{type(self.scan).__name__}; build one with ScanConfig(...) or "
                               "set flat names with with_settings(config, rho_low=...)")
        scan = run_scan_config(self.scan, seed=self.seed, epochs=self.epochs)  # type: ignore
        object.__setattr__(self, "scan", scan)

    @property
    def pruning(self) -> str:
        """The pruning rule's name (--pruning)."""
        return rule_name(self.scan)

    def to_dict(self) -> dict[str, Any]:
        """Flat and JSON-able, as config.json has always held it: every field but `scan`, and
        `pruning` with SCAN's exposed settings under their flat names."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "scan"}
        out["pruning"] = self.pruning
        out.update({flat_name(f): getattr(self.scan, f) for f in SCAN_FLAG_FIELDS})
        return out


def with_settings(config: Any, **changes: Any) -> Any:
    """`config` with `changes` applied, by flat name: SCAN's (`SCAN_SETTINGS`: pruning,
    rho_low, ..., scan_warmup_epochs) go into `config.scan`, the rest replace fields.

    >>> cfg = with_settings(TrainConfig(), pruning="ill", rho_high=0.2, epochs=5)
    >>> cfg.scan.mode, cfg.scan.rho_high, cfg.epochs, cfg.pruning
    ('ill_matched', 0.2, 5, 'ill')
    """
    scan_changes = {field: changes.pop(flat_name(field)) for field in SCAN_FLAG_FIELDS
                    if flat_name(field) in changes}
    rule = changes.pop("pruning", None)
    known = {f.name for f in dataclasses.fields(config)}
    unsupported = sorted(set(changes) - known)
    if unsupported:
        flags_named = ", ".join("--" + name.replace("_", "-") for name in unsupported)
        raise TrainerError(f"{flags_named}: not supported by the {config.preset} preset's "
                           f"trainer ({type(config).__name__}); its settings are "
                           f"{', '.join(sorted(known | set(SCAN_SETTINGS)))}.")
    config = dataclasses.replace(config, **changes)
    if rule is None and not scan_changes:
        return config
    # Built and checked with the run's length (a target rate, tail epochs and InfoBatch need
    # it); __post_init__ then keeps it only where needed.
    scan = config.scan.replace(num_epochs=config.epochs)
    scan = ScanConfig.for_rule(rule, scan) if rule is not None else scan
    scan = scan.replace(**scan_changes)
    return dataclasses.replace(config, scan=scan)


@dataclasses.dataclass(frozen=True)
class TrainConfig(ScanSettings):
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
    warmup_steps: int | None = None       # --warmup (open_clip): replaces lr_warmup_epochs
    weight_decay: float = 0.1
    embed_dim: int = 128
    # evaluation and bookkeeping
    eval_every: int = 1                   # zero-shot every k epochs (0: at the end only)
    probe_every: int = 0                  # linear probe every k epochs (0: at the end only)
    seed: int = 0
    threads: int | None = None
    workers: int | None = None            # DataLoader workers decoding a corpus (workers.py);
    # None = 0, so config.json of runs written before the flag resume unchanged
    imagenet_val: str | None = None       # ImageFolder tree for zero-shot (common/user_eval.py)
    classnames: str | None = None         # its class names, one line per sorted class folder
    val_data: str | None = None           # held-out (image, caption) CSV for retrieval recall@K
    report_to: str | None = None          # tensorboard: event files in RUN/tensorboard
    # shards: URLs (corpora/run_index.py); None keeps runs written before them resumable
    shard_index: str | None = None        # the key index's file (None: RUN/scan-index.npz)
    train_num_samples: int | None = None  # open_clip's count, checked against the index
    save_frequency: int | None = None     # also keep the checkpoint of every k-th epoch


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
# derived from ScanConfig's fields and serve every trainer; the rest are CLIP's.
def _field_help(field: str) -> str:
    """The field's entry in ScanConfig's docstring (its Attributes section), on one line."""
    doc = ScanConfig.__doc__ or ""
    match = re.search(rf"^ +(?:\w+ / )?{field}(?: / \w+)?: (.*?)(?=^ +\w+(?: / \w+)?: |\Z)",
                      doc, flags=re.S | re.M)
    return " ".join(match.group(1).split()) if match else field


def _flag_type(field: str) -> tuple[Any, tuple[str, ...] | None]:
    """(argparse type, choices) of a ScanConfig field from its annotation."""
    hint = typing.get_type_hints(ScanConfig)[field]
    if typing.get_origin(hint) is typing.Literal:
        return str, typing.get_args(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]  # X | None -> X
    return (args[0] if args else hint), None


def scan_flags() -> list[tuple[str, str, Any, str]]:
    """(flag, flat name, type, help) of every SCAN_FLAG_FIELDS field but the booleans (those
    are switches: build_parser adds them)."""
    out = []
    for field in SCAN_FLAG_FIELDS:
        kind, choices = _flag_type(field)
        if kind is bool:
            continue
        text = _field_help(field) + (f" ({', '.join(choices)})" if choices else "")
        out.append(("--" + flat_name(field).replace("_", "-"), flat_name(field), kind,
                    text.replace("%", "%%")))
    return out


PRUNING_FLAGS = [*scan_flags(), ("--loss-history", "loss_history", str,
                                  "float16/float32: keep preparation losses")]


def flag_table(table: str) -> list[tuple[str, str, Any, str]]:
    """(flag, field, type, help) rows from a text table: one flag a line, `--flag TYPE help`
    (TYPE int, float or str; the field is the flag's name with `_` for `-`), a help text
    going on over the indented lines below it.

    >>> flag_table('''
    ...     --num-test   int   evaluation subset
    ...                        size
    ... ''')
    [('--num-test', 'num_test', <class 'int'>, 'evaluation subset size')]
    """
    rows: list[tuple[str, str, Any, str]] = []
    for line in table.strip("\n").splitlines():
        words = line.split(maxsplit=2)
        if words and words[0].startswith("--"):
            kinds = {"int": int, "float": float, "str": str}
            if len(words) < 2 or words[1] not in kinds:
                raise TrainerError(f"flag table line {line.strip()!r}: the type after the flag "
                                   f"must be one of {sorted(kinds)}")
            flag, kind = words[0], kinds[words[1]]
            rows.append((flag, flag[2:].replace("-", "_"), kind, words[2] if len(words) > 2
                         else ""))
        elif words:
            flag, field, kind, text = rows[-1]
            rows[-1] = (flag, field, kind, f"{text} {' '.join(words)}")
    return rows


# Flags every trainer has (MoCo's config.FLAGS uses them too): the Fashion-MNIST subset, the
# run's length and batch, and the bookkeeping at the end of the list.
SUBSET_FLAGS = flag_table("""
    --num-train        int    class-balanced training subset size
    --num-test         int    evaluation subset size
    --duplicate-share  float  share of near-duplicate images
""")
LENGTH_FLAGS = flag_table("""
    --epochs      int  training epochs
    --batch-size  int  per-rank batch size
""")
BOOKKEEPING_FLAGS = flag_table("""
    --probe-every  int  linear probe every k epochs (0: end only)
    --seed         int  seed of data, model and pruning
    --threads      int  torch CPU threads
""")
# Shard sources (corpora/run_index.py) and checkpoints kept (rundir.py), CLIP's and MoCo's.
SHARD_FLAGS = flag_table("""
    --shard-index        str  the shards' key index file (default RUN/scan-index.npz: the
                              dataset folder is only read)
    --train-num-samples  int  open_clip's sample count of --train-data; checked against the
                              shard index (refused when it differs)
    --save-frequency     int  also keep the checkpoint of every k-th epoch (open_clip's; the
                              two newest are always kept for --resume)
""")

_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--data-dir", "data_dir", str, "directory of the four Fashion-MNIST IDX files"),
    ("--data", "data", str, "training data: fmnist (default), csv:PATH (image,caption rows) "
     "or shards:SOURCE: a folder of webdataset-style .tar shards, a .tar, a brace pattern "
     "'DIR/{00000..00009}.tar', a '::' list or pipe:COMMAND (docs/corpora.md)"),
    *SHARD_FLAGS,
    ("--workers", "workers", int, "DataLoader worker processes decoding a csv:/shards: corpus "
     "(default 0: in the trainer's process; Fashion-MNIST is in memory and needs none)"),
    ("--tokenizer", "tokenizer", str, "word (default), bpe:PATH (train_tokenizer) or open_clip"),
    ("--model", "model", str, "cpu (default) or a GPU preset: RN50, RN101, ViT-B-32"),
    ("--precision", "precision", str, "fp32 (default), bf16 or fp16 autocast"),
    *SUBSET_FLAGS,
    ("--mismatch-share", "mismatch_share", float, "share of captions naming a wrong class"),
    *LENGTH_FLAGS,
    ("--lr", "lr", float, "peak learning rate (AdamW)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    *PRUNING_FLAGS,
    ("--eval-every", "eval_every", int, "evaluate every k epochs (0: end only)"),
    ("--imagenet-val", "imagenet_val", str, "ImageFolder tree DIR/<class>/<image>: zero-shot "
     "top-1/top-5 on your classes (replaces the Fashion-MNIST zero-shot)"),
    ("--classnames", "classnames", str, "class names of --imagenet-val, one line per class "
     "folder in sorted order (default: the folder names)"),
    ("--val-data", "val_data", str, "held-out image,caption CSV: image<->text recall@1/5/10"),
    ("--report-to", "report_to", str, "tensorboard: per-step train/* and per-epoch scan/*, "
     "eval/* scalars in OUT/tensorboard (needs the tensorboard extra)"),
    *BOOKKEEPING_FLAGS,
]


class _TrainerParser(argparse.ArgumentParser):
    """argparse with --resume latest|PATH resolved into (resume: bool, out) after parsing
    (common/resume_flag.py), so every trainer's main sees what it always did."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        parsed = resolve_resume(parsed, self.error)
        if parsed.out is None and "logs" not in vars(parsed):  # CLIP's --logs/--name: later
            self.error("the run directory is required: --out DIR (or --resume RUN)")
        return parsed, rest


def build_parser(prog: str, *, presets: dict[str, Any] | None = None,
                 flags: list[tuple[str, str, Any, str]] | None = None,
                 default_preset: str = "cpu-fmnist",
                 description: str = "SCAN reference trainer.") -> argparse.ArgumentParser:
    """The command line of a trainer: --preset, --pruning, --out, --resume, --quiet,
    --stop-after, --ill-every-mutation, and `flags` (default CLIP's) over the preset's fields."""
    presets = PRESETS if presets is None else presets
    flags = _FLAGS if flags is None else flags
    parser = _TrainerParser(prog=prog, description=description)
    parser.add_argument("--preset", choices=sorted(presets), default=default_preset)
    parser.add_argument("--pruning", choices=RULE_NAMES, default=None,
                        help="pruning rule (default scan)")
    parser.add_argument("--out", default=None, help="run directory (required, or --resume RUN)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        metavar="latest|PATH", help=RESUME_HELP)
    parser.add_argument("--ill-every-mutation", action="store_true", default=None,
                        help=_field_help("ill_every_mutation"))
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
    """The preset's config with every flag the user set replacing its setting."""
    config = (PRESETS if presets is None else presets)[args.preset]()
    names = [name for _, name, _, _ in (_FLAGS if flags is None else flags)] + \
        ["pruning", "ill_every_mutation", "compile", "grad_checkpointing", "framework"]
    return with_settings(config, **{n: getattr(args, n) for n in names
                                    if getattr(args, n, None) is not None})
