"""MoCo v3 training configs: a typed record, preset functions, and the flags over it.
Framework-free, so the PyTorch trainer (moco/train.py) and the JAX one (jax/moco.py) both read
it from the floor below them.

Presets (the docstring gives the launch command and the measured cost):
- `cpu-fmnist-moco`: MoCo v3 with a small ResNet on all 60k Fashion-MNIST images, CPU, minutes.
- `cpu-tiny-moco`: a 2k-image subset for smoke tests, seconds.
SCAN's settings are the config's `scan` (common/config.ScanSettings), defaulting to the
authors' MoCo values (rho 0.35 per end, T_cos 3, T_td 0.3: `scan_core.ScanConfig.moco()`).
The pruning flags are CLIP's, derived from ScanConfig (common/config.PRUNING_FLAGS).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reference_trainers.common.config import PRUNING_FLAGS, ScanSettings
from reference_trainers.common.flags import (BOOKKEEPING_FLAGS, LENGTH_FLAGS, SHARD_FLAGS,
                                             SUBSET_FLAGS, flag_table)
from reference_trainers.common.errors import TrainerError
from scan_core import ScanConfig


@dataclasses.dataclass(frozen=True)
class MocoConfig(ScanSettings):
    preset: str = "cpu-fmnist-moco"
    # data
    data_dir: str | None = None
    data: str = "fmnist"                  # fmnist | folder:DIR | csv:PATH | shards:DIR
    num_train: int | None = None          # class-balanced subset; None = the whole split
    num_test: int | None = None           # evaluation subset; None = all 10k test images
    duplicate_share: float = 0.0          # planted near-duplicate images
    # model
    backbone: str = "resnet"              # resnet | vit-tiny | vit_small | vit_base (GPU)
    framework: str = "torch"              # torch | jax (reference_trainers/jax/)
    grad_checkpointing: bool = False      # recompute ViT blocks in the backward
    precision: str = "fp32"               # fp32 | bf16 | fp16 autocast (common/accel.py)
    compile: bool = False                 # torch.compile the model
    width: int = 16                       # SmallResNet width (features 4 * width)
    dim: int = 128                        # projector / predictor output (MoCo v3: 256)
    mlp_dim: int = 512                    # their hidden width (MoCo v3: 4096)
    temperature: float = 0.2
    momentum: float = 0.99                # m0 of the cosine momentum schedule
    crop_min: float = 0.2                 # smallest crop area share (MoCo v3's --crop-min)
    # optimisation
    optimizer: str = "lars"               # lars (MoCo v3's ResNet default) | adamw (ViT)
    epochs: int = 6
    batch_size: int = 256                 # per rank
    lr: float = 0.6                       # base LR per 256 samples of global batch
    min_lr: float = 0.0
    lr_warmup_epochs: float = 0.5
    weight_decay: float = 1e-6
    # pruning: `scan` (ScanSettings), the authors' MoCo defaults
    scan: ScanConfig = ScanConfig.moco()
    # evaluation and bookkeeping
    eval_every: int = 0                   # kNN top-1 every k epochs (0: at the end only)
    probe_every: int = 0                  # linear probe every k epochs (0: at the end only)
    knn_k: int = 20
    seed: int = 0
    threads: int | None = None
    workers: int | None = None            # DataLoader workers decoding the corpus (None = 0)
    shard_index: str | None = None        # shards: the key index file (None: in the run dir)
    train_num_samples: int | None = None  # open_clip's count, checked against the index
    save_frequency: int | None = None     # also keep the checkpoint of every k-th epoch
    eval_folder: str | None = None        # labelled ImageFolder for kNN / probe (moco_user_eval)
    eval_train_folder: str | None = None  # its kNN bank / probe training images (default: half)
    report_to: str | None = None          # tensorboard: event files in RUN/tensorboard

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.crop_min <= 1:
            raise TrainerError(f"crop_min={self.crop_min!r}: --crop-min is the smallest crop's "
                               "share of the image area, in (0, 1] (MoCo v3: 0.2 for ResNet, "
                               "0.08 for ViT)")


def cpu_fmnist_moco() -> MocoConfig:
    """MoCo v3 (SmallResNet width 16, LARS) on Fashion-MNIST's 60k training images with SCAN.

        python -m reference_trainers.moco --preset cpu-fmnist-moco --out runs/moco

    Cost on 2 CPU cores (torch 2.13): see docs/moco-trainer.md for the measured figures.
    """
    return MocoConfig(preset="cpu-fmnist-moco")


def cpu_tiny_moco() -> MocoConfig:
    """A 2k-image subset with a narrow ResNet for smoke tests: about a second per epoch.

        python -m reference_trainers.moco --preset cpu-tiny-moco --out runs/tiny-moco
    """
    return MocoConfig(preset="cpu-tiny-moco", num_train=2048, num_test=1000, width=8, dim=64,
                      mlp_dim=128, epochs=6, batch_size=128, lr_warmup_epochs=0.25)


PRESETS = {"cpu-fmnist-moco": cpu_fmnist_moco, "cpu-tiny-moco": cpu_tiny_moco}

FLAGS = [*flag_table("""
    --data-dir  str  directory of the four Fashion-MNIST IDX files
    --data      str  training images: fmnist (default), folder:DIR (DIR/<class>/<image>),
                     csv:PATH (an image column) or shards:SOURCE (tar shards, .txt not needed;
                     a folder, a .tar, a brace pattern, a '::' list or pipe:COMMAND)
"""), *SHARD_FLAGS, *SUBSET_FLAGS, *flag_table("""
    --backbone     str    resnet, vit-tiny, or the GPU presets vit_small / vit_base
    --width        int    SmallResNet width
    --precision    str    fp32 (default), bf16 or fp16 autocast
    --temperature  float  InfoNCE temperature
    --momentum     float  base momentum m0 of the momentum encoder
    --crop-min     float  smallest crop area share (MoCo v3: 0.2 ResNet, 0.08 ViT)
    --optimizer    str    lars or adamw
"""), *LENGTH_FLAGS, *flag_table("""
    --lr                float  base learning rate per 256 samples (scaled by global batch)
    --lr-warmup-epochs  float  linear LR warm-up, fractional epochs
    --weight-decay      float  weight decay
"""), *PRUNING_FLAGS, *flag_table("""
    --eval-every         int  kNN top-1 every k epochs (0: end only)
    --eval-folder        str  labelled ImageFolder DIR/<class>/<image>: kNN and linear probe
                              on your classes (replaces Fashion-MNIST; docs/moco-trainer.md)
    --eval-train-folder  str  the kNN bank / probe's training images, a tree with the same
                              class folders (default: a seeded half of --eval-folder)
    --workers            int  DataLoader worker processes reading and decoding a folder:,
                              csv: or shards: corpus (default 0: in the trainer's process)
    --report-to          str  tensorboard: per-step train/* and per-epoch scan/*, eval/*
                              scalars in OUT/tensorboard (needs the tensorboard extra)
"""), *BOOKKEEPING_FLAGS]
