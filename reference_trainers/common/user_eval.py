"""Evaluation on the user's own data for the PyTorch CLIP trainer (`--imagenet-val DIR`,
`--classnames FILE`, `--val-data CSV`), and which Fashion-MNIST a run needs.

* `--imagenet-val DIR`: zero-shot top-1 / top-5 on an ImageFolder tree DIR/<class>/<image>
  (ImageNet's val split laid out as open_clip users have it, or any tree of your classes).
  Class names: the lines of `--classnames FILE` (one per class folder, in sorted folder
  order) or the folder names with '_' as spaces; each class's prompts are
  retrieval_maths.FOLDER_TEMPLATES averaged (the CLIP prompt ensemble). Written as
  `zero_shot_top1` / `zero_shot_top5`: it replaces the Fashion-MNIST zero-shot.
* `--val-data CSV`: held-out (image, caption) pairs in the training CSV's format;
  `image_to_text_R@{1,5,10}` and `text_to_image_R@{1,5,10}` (retrieval_maths.recall_at_k).
  Bad rows are left out as in training.
* Fashion-MNIST (`fashion_mnist_for`): a `--data fmnist` run needs it; a corpus run evaluates
  zero-shot on its test split only when no set of the user's was given and the files are
  there (or `--data-dir` names them). Otherwise the run evaluates what it was given, or
  nothing (`no_evaluation_note` says so once): it never needs the files.

The maths is numpy (common/retrieval_maths.py, common/eval_maths.py) and which sets a run has
is torch-free too (common/user_sets.py: `fashion_mnist_for`, `no_evaluation_note`, the checks
of the flags), so the JAX trainer (jax/user_eval.py) shares them; this module only runs the
torch towers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from reference_trainers.common import eval_maths
from reference_trainers.common.errors import DataError
from reference_trainers.common.retrieval_maths import (class_names_for, folder_prompts,
                                                       recall_at_k, topk_accuracy)
from reference_trainers.common.user_sets import (check_classnames, check_pairs,
                                                 fashion_mnist_for, no_evaluation_note)

__all__ = ["UserEvaluation", "fashion_mnist_for", "no_evaluation_note"]

EVAL_BATCH = 256  # images per forward pass when extracting features


class UserEvaluation:
    """The user's evaluation sets, listed once at the start (a bad path fails the run before
    any training). Call it with the (unwrapped) model and its device for the scores."""

    def __init__(self, *, imagenet_val: str | None, val_data: str | None,
                 classnames: str | None, spec: Any, tokenizer: Any):
        from reference_trainers.common.corpora import CsvCorpus, ImageFolderCorpus

        check_classnames(imagenet_val, classnames)
        self.tokenizer = tokenizer
        self.folder = ImageFolderCorpus(imagenet_val, spec=spec) if imagenet_val else None
        self.class_names = (class_names_for(self.folder.class_names, classnames)
                            if self.folder is not None else ())
        self.pairs = (CsvCorpus(val_data, spec=spec, tokenizer=tokenizer.encode)
                      if val_data else None)
        if self.pairs is not None:
            check_pairs(val_data, len(self.pairs.good_ids), self.pairs.skipped)

    @property
    def active(self) -> bool:
        return self.folder is not None or self.pairs is not None

    def __call__(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        out: dict[str, float] = {}
        was_training = model.training
        model.eval()
        with torch.no_grad():
            if self.folder is not None:
                out.update(self._zero_shot(model, device))
            if self.pairs is not None:
                out.update(self._retrieval(model, device))
        model.train(was_training)
        return out

    def _encode_text(self, model, device):
        def encode(tokens: np.ndarray) -> np.ndarray:
            return model.encode_text(torch.from_numpy(np.asarray(tokens)).to(device)) \
                .float().cpu().numpy()
        return encode

    def _images(self, model, corpus, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features (N', D), tokens (N', L), ids (N',)) of the corpus's decodable samples."""
        features, tokens, served = [], [], []
        good = corpus.good_ids
        for start in range(0, len(good), EVAL_BATCH):
            x, t, ids = corpus.batch(good[start:start + EVAL_BATCH], augment=False)
            if len(ids):
                features.append(model.encode_image(x.to(device)).float().cpu().numpy())
                tokens.append(t.numpy())
                served.append(ids.numpy())
        if not served:
            raise DataError(f"no image of {corpus.source} decodes: cannot evaluate on it")
        return np.concatenate(features), np.concatenate(tokens), np.concatenate(served)

    def _zero_shot(self, model, device) -> dict[str, float]:
        classifier = eval_maths.zero_shot_classifier(
            self._encode_text(model, device), folder_prompts(self.class_names),
            self.tokenizer.encode)
        features, _, ids = self._images(model, self.folder, device)
        logits = eval_maths.normalise_rows(features) @ classifier.T
        scores = topk_accuracy(logits, self.folder.labels[ids], ks=(1, 5))
        return {"zero_shot_top1": scores["top1"], "zero_shot_top5": scores["top5"]}

    def _retrieval(self, model, device) -> dict[str, float]:
        image_features, tokens, _ = self._images(model, self.pairs, device)
        text_features = np.concatenate([
            self._encode_text(model, device)(tokens[start:start + EVAL_BATCH])
            for start in range(0, len(tokens), EVAL_BATCH)])
        return recall_at_k(image_features, text_features, ks=(1, 5, 10))
