"""corpus.json: what a run trained on, so a resume refuses a corpus whose file list changed
(ids would then name other images than the pruner's store remembers). Framework-free: both MoCo
trainers write it (moco/train.py through moco/data.py, jax/moco.py).

A corpus given as `train.disk_corpus()` (None: Fashion-MNIST, fixed, or shards, whose key
index refuses changed shards by itself) has `listing` (the names fingerprinted), `len()`, and
`class_names` / `labels` (a folder tree's; kept in corpus_labels.npz for a probe of your own).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from reference_trainers.common.errors import TrainerError
from reference_trainers.common.rundir import RunDir

__all__ = ["check_corpus"]


def check_corpus(run_dir: RunDir, train: Any, *, resume: bool, write: bool = True) -> None:
    """Write corpus.json (the corpus's size and a hash of its file list) and, for a folder
    tree, corpus_labels.npz; on resume refuse (TrainerError) a corpus whose list changed.
    write=False only checks (every process checks, so all refuse alike; process 0 writes)."""
    corpus = train.disk_corpus()
    if corpus is None:
        return
    listing = corpus.listing
    record = {"num_samples": len(corpus),
              "fingerprint": hashlib.sha256("\n".join(listing).encode("utf-8")).hexdigest()}
    target = run_dir.path / "corpus.json"
    if resume and target.exists():
        old = json.loads(target.read_text())
        if old != record:
            raise TrainerError(f"--resume of {run_dir.path}: the corpus changed since the run "
                               f"began ({old['num_samples']} files then, {len(corpus)} now, or "
                               "other names); ids would name other images. Restore the corpus "
                               "or start a new run.")
        return  # unchanged: nothing to write (other ranks may be reading it now)
    if not write:
        return
    target.write_text(json.dumps(record) + "\n")
    if corpus.class_names is not None:
        run_dir.save_array("corpus_labels", labels=corpus.labels,
                           class_names=np.array(corpus.class_names, dtype=str))
