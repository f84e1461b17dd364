"""Which evaluation sets a run has, for both frameworks (no torch, no JAX): the
Fashion-MNIST a run needs (`fashion_mnist_for`; MoCo passes its `--eval-folder` as
`own_sets`), the line a run that evaluates nothing prints (`no_evaluation_note`,
`no_moco_evaluation_note`), and the checks of `--classnames` and `--val-data` that fail a run before
any training. The towers that score the sets are common/user_eval.py (torch) and
jax/user_eval.py (JAX); their maths is common/retrieval_maths.py.
"""

from __future__ import annotations

from typing import Any

from reference_trainers.common.data import ImageSplits, load_fashion_mnist
from reference_trainers.common.errors import DataError

__all__ = ["check_classnames", "check_pairs", "fashion_mnist_for", "no_evaluation_note",
           "no_moco_evaluation_note"]


def fashion_mnist_for(cfg: Any, *, own_sets: bool | None = None) -> ImageSplits | None:
    """Fashion-MNIST's splits when the run trains on them (`--data fmnist`) or evaluates on
    them (a corpus run given no set of its own, with the files present or `--data-dir` set);
    None when the run needs no Fashion-MNIST file. own_sets: the run has evaluation sets of
    its own (default: CLIP's --imagenet-val / --val-data)."""
    if cfg.data == "fmnist":
        return load_fashion_mnist(cfg.data_dir)
    if own_sets if own_sets is not None else (cfg.imagenet_val or cfg.val_data):
        return None
    if cfg.data_dir is not None:  # named on purpose: a bad folder is an error, as before
        return load_fashion_mnist(cfg.data_dir)
    try:
        return load_fashion_mnist()
    except DataError:
        return None


def no_evaluation_note(cfg: Any, has_fashion_mnist_test: bool) -> str | None:
    """The line a run prints when it will evaluate nothing, naming the flags that would."""
    if has_fashion_mnist_test or cfg.imagenet_val or cfg.val_data:
        return None
    return ("no evaluation set: this run trains only (metrics.jsonl has no zero-shot). Pass "
            "--imagenet-val DIR (zero-shot on an ImageFolder of your classes) and/or --val-data "
            "CSV (image/text retrieval on held-out pairs), or install Fashion-MNIST for the demo "
            "zero-shot.")


def no_moco_evaluation_note(cfg: Any, has_fashion_mnist: bool) -> str | None:
    """The MoCo run's line when it will evaluate nothing, naming the flag that would."""
    if has_fashion_mnist or cfg.eval_folder:
        return None
    return ("no evaluation set: this run trains only (metrics.jsonl has no kNN nor probe). "
            "Pass --eval-folder DIR (kNN and linear probe on an ImageFolder of your classes, "
            "with --eval-train-folder DIR for its bank), or install Fashion-MNIST for the demo.")


def check_classnames(imagenet_val: str | None, classnames: str | None) -> None:
    """--classnames names the classes of --imagenet-val: refuse it alone (DataError)."""
    if classnames and not imagenet_val:
        raise DataError(f"--classnames {classnames} names the classes of --imagenet-val, "
                        "which is not set: pass --imagenet-val DIR as well")


def check_pairs(val_data: str, good_count: int, skipped: dict[int, str]) -> None:
    """Refuse a --val-data CSV with no usable (image, caption) row (DataError)."""
    if good_count == 0:
        raise DataError(f"--val-data {val_data}: no usable (image, caption) row "
                        f"({len(skipped)} skipped, e.g. {next(iter(skipped.values()), 'none')});"
                        " expected a CSV like the training one, with image and caption columns")
