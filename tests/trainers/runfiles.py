"""Test helpers that lay out run-directory files the way a run leaves them, and read and
compare what a run left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

META = {"config": {}, "num_samples": 4, "num_views": 2, "world_size": 1}


def snapshot(run, *epochs: int) -> None:
    """Completed store snapshots of `epochs` in run.store (a stand-in for the pruner's; the
    resume logic only asks which epochs the store holds)."""
    from scan_core import LossStore

    store = LossStore.open(run.store, META, writable=True)
    for epoch in epochs:
        store.write_snapshot(epoch, {"epoch": epoch, "ids": np.arange(4)})


def metrics_rows(out: str | Path) -> list[dict[str, Any]]:
    """The rows of a run directory's metrics.jsonl, in order."""
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def store_log(out: str | Path) -> list[dict[str, Any]]:
    """The pruner's per-epoch log as the run's store holds it (its latest snapshot)."""
    from scan_core import LossStore

    store = LossStore.open(Path(out) / "scan.zarr", LossStore.read_meta(Path(out) / "scan.zarr"),
                           writable=False)
    return store.load_latest()["log"]


def assert_resumed_equals_uninterrupted(uninterrupted: Path, resumed: Path, epochs: int) -> None:
    """A run stopped and resumed ran every epoch once, with the plans (phase, kept, |D'|),
    training losses and store log of the run that never stopped."""
    a, b = metrics_rows(uninterrupted), metrics_rows(resumed)
    assert [r["epoch"] for r in b] == list(range(epochs))
    for ra, rb in zip(a, b):
        assert (ra["phase"], ra["num_kept"], ra["num_candidates"]) == \
            (rb["phase"], rb["num_kept"], rb["num_candidates"])
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)
    assert store_log(uninterrupted) == store_log(resumed)
