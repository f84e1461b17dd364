"""Test helpers that lay out run-directory files the way a run leaves them."""

from __future__ import annotations

import numpy as np

META = {"config": {}, "num_samples": 4, "num_views": 2, "world_size": 1}


def snapshot(run, *epochs: int) -> None:
    """Completed store snapshots of `epochs` in run.store (a stand-in for the pruner's; the
    resume logic only asks which epochs the store holds)."""
    from scan_core import LossStore

    store = LossStore.open(run.store, META, writable=True)
    for epoch in epochs:
        store.write_snapshot(epoch, {"epoch": epoch, "ids": np.arange(4)})
