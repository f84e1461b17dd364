"""Evaluation on the user's own data for the JAX CLIP trainer: `--imagenet-val DIR` (with
`--classnames FILE`) zero-shot top-1 / top-5 and `--val-data CSV|SHARDS` image<->text
recall@1/5/10 (SHARDS: `shards:SOURCE`, a folder of .tar, a .tar or a brace pattern),
the PyTorch trainer's numbers (common/user_eval.py) with JAX towers. Never imports torch.

Same sets, same maths, same keys: the class names (common/retrieval_maths.class_names_for), the
prompt ensemble (FOLDER_TEMPLATES through eval_maths.zero_shot_classifier), top-K with ties
against the label and recall@K (retrieval_maths), written as `zero_shot_top1` / `zero_shot_top5`
and `image_to_text_R@K` / `text_to_image_R@K`. The sets are read as the JAX trainer reads its
training corpus (corpora/arrays.CorpusArrays): the tree from corpora/images.list_image_tree,
the CSV with the training CSV's rules, shards as training reads them (each image read by a
seek, captions from the .txt members); an image that cannot be read or decoded is left out of
the evaluation, as the torch trainer leaves it out.

Every forward pass has EVAL_BATCH rows (the last batch padded with repeats of its first row,
their features dropped), so each tower compiles once per run whatever the set sizes.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from reference_trainers.common import eval_maths
from reference_trainers.common.corpora.arrays import CorpusArrays, FileReader
from reference_trainers.common.corpora.images import (BadSampleError, ImageSpec,
                                                      list_image_tree)
from reference_trainers.common.corpora.run_index import index_for_run
from reference_trainers.common.corpora.shard_sources import is_url_source
from reference_trainers.common.errors import DataError
from reference_trainers.common.retrieval_maths import (class_names_for, folder_prompts,
                                                       recall_at_k, topk_accuracy)
from reference_trainers.common.user_sets import check_classnames, check_pairs
from reference_trainers.jax.augment import normalise

__all__ = ["EVAL_BATCH", "JaxUserEvaluation", "VAL_INDEX_NAME", "padded_batches",
           "val_shard_source"]

EVAL_BATCH = 256  # rows per forward pass (images or texts)
VAL_INDEX_NAME = "scan-val-index.npz"  # --val-data shards' key index, in the run directory
Encode = Callable[[np.ndarray], Any]  # one batch -> (B, D) features (a jax or numpy array)


def padded_batches(encode: Encode, rows: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """encode(rows) as float32 (N, D), in batches of exactly `batch` rows: the last one is
    padded with repeats of its first row and the padding's features dropped."""
    if len(rows) == 0:
        raise DataError("nothing to encode: the evaluation set has no usable row")
    out = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - len(chunk), axis=0)])
        out.append(np.asarray(encode(chunk), np.float32)[:min(batch, len(rows) - start)])
    return np.concatenate(out)


def folder_arrays(root: str, spec: ImageSpec, tokenizer: Any) -> tuple[CorpusArrays, np.ndarray,
                                                                      tuple[str, ...]]:
    """The ImageFolder tree `root` as image-only CorpusArrays, its labels and class folders."""
    tree = pathlib.Path(root)
    relative, labels, classes = list_image_tree(tree)
    data = CorpusArrays(relative, [""] * len(relative), FileReader(relative, root=tree), {},
                        spec=spec, tokenizer=tokenizer, source=str(tree))
    return data, labels, classes


def val_shard_source(val_data: str) -> str | None:
    """The shard source `--val-data` names (`shards:SOURCE`, a folder of .tar, a .tar, a brace
    pattern or a '::' list, as --train-data takes them), or None for a CSV."""
    if val_data.startswith("shards:"):
        return val_data[len("shards:"):]
    if is_url_source(val_data) or os.path.isdir(val_data):
        return val_data
    return None


def pairs_arrays(val_data: str, spec: ImageSpec, tokenizer: Any,
                 run_path: str | os.PathLike | None) -> CorpusArrays:
    """--val-data's held-out pairs: a CSV, or local tar shards read by seeking (their key
    index kept as RUN/scan-val-index.npz, so the dataset folder is only read, and checked
    against the shards when a run resumes; beside the shards without a run directory)."""
    source = val_shard_source(val_data)
    if source is None:
        return CorpusArrays.from_csv(val_data, spec=spec, tokenizer=tokenizer)
    index_path = None if run_path is None else pathlib.Path(run_path) / VAL_INDEX_NAME
    index = index_for_run(source, shard_index=index_path)
    return CorpusArrays.from_shards(index, spec=spec, tokenizer=tokenizer)


class JaxUserEvaluation:
    """The user's evaluation sets, listed once at the start (a bad path or classnames file
    fails the run before any training). Call it with the jitted encoders (variables, batch)
    -> features and the model's variables for the scores."""

    def __init__(self, *, imagenet_val: str | None, val_data: str | None,
                 classnames: str | None, spec: ImageSpec, tokenizer: Any,
                 run_path: str | os.PathLike | None = None):
        check_classnames(imagenet_val, classnames)
        self.tokenizer = tokenizer
        self.folder, self.labels, self.class_names = None, None, ()
        if imagenet_val:
            self.folder, self.labels, folders = folder_arrays(imagenet_val, spec, tokenizer)
            self.class_names = class_names_for(folders, classnames)
        self.pairs = pairs_arrays(val_data, spec, tokenizer, run_path) if val_data else None
        if self.pairs is not None:
            check_pairs(val_data, self.pairs.num_samples - len(self.pairs.skipped),
                        self.pairs.skipped)

    @property
    def active(self) -> bool:
        return self.folder is not None or self.pairs is not None

    def __call__(self, encoders: tuple[Any, Any], variables: Any) -> dict[str, float]:
        encode_image, encode_text = encoders
        images = lambda x: encode_image(variables, normalise(x))  # noqa: E731
        texts = lambda t: encode_text(variables, t)  # noqa: E731
        out: dict[str, float] = {}
        if self.folder is not None:
            out.update(self._zero_shot(images, texts))
        if self.pairs is not None:
            out.update(self._retrieval(images, texts))
        return out

    def _images(self, encode: Encode, data: CorpusArrays) -> tuple[np.ndarray, np.ndarray]:
        """(features (N', D), ids (N',)) of the set's samples that read and decode, decoded
        EVAL_BATCH at a time."""
        features, served = [], []
        candidates = [i for i in range(data.num_samples) if i not in data.skipped]
        for start in range(0, len(candidates), EVAL_BATCH):
            pixels, ids = [], []
            for i in candidates[start:start + EVAL_BATCH]:
                try:
                    pixels.append(data.load_image(i))
                    ids.append(i)
                except BadSampleError as err:
                    data.skipped[i] = f"decode {data.names[i]}: {err}"
            if ids:
                features.append(padded_batches(encode, np.stack(pixels)))
                served += ids
        if not served:
            raise DataError(f"no image of {data.source} decodes: cannot evaluate on it")
        return np.concatenate(features), np.asarray(served, np.int64)

    def _zero_shot(self, images: Encode, texts: Encode) -> dict[str, float]:
        # Every distinct prompt encoded once, in full batches (1000 classes x 12 templates:
        # 47 passes, not 1000 mostly-padding ones); the shared maths then reads its rows.
        prompts = folder_prompts(self.class_names)
        distinct = sorted({text for group in prompts for text in group})
        row_of = {text: row for row, text in enumerate(distinct)}
        features = padded_batches(texts, self.tokenizer.encode(distinct))
        classifier = eval_maths.zero_shot_classifier(
            lambda rows: features[rows], prompts,
            lambda group: np.array([row_of[text] for text in group], np.int64))
        features, ids = self._images(images, self.folder)
        logits = eval_maths.normalise_rows(features) @ classifier.T
        scores = topk_accuracy(logits, self.labels[ids], ks=(1, 5))
        return {"zero_shot_top1": scores["top1"], "zero_shot_top5": scores["top5"]}

    def _retrieval(self, images: Encode, texts: Encode) -> dict[str, float]:
        image_features, ids = self._images(images, self.pairs)
        text_features = padded_batches(texts, self.pairs.tokens[ids])
        return recall_at_k(image_features, text_features, ks=(1, 5, 10))
