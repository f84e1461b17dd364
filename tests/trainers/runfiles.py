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


def latest_snapshot(out: str | Path) -> dict[str, Any]:
    """The pruner's state as the run's store last saved it (read-only)."""
    from scan_core import LossStore

    store = LossStore.open(Path(out) / "scan.zarr", LossStore.read_meta(Path(out) / "scan.zarr"),
                           writable=False)
    return store.load_latest()


def store_log(out: str | Path) -> list[dict[str, Any]]:
    """The pruner's per-epoch log as the run's store holds it (its latest snapshot)."""
    return latest_snapshot(out)["log"]


def assert_resumed_equals_uninterrupted(uninterrupted: Path, resumed: Path, epochs: int, *,
                                        loss_rel: float = 1e-5,
                                        exact: tuple[str, ...] = ()) -> None:
    """A run stopped and resumed ran every epoch once, with the plans (phase, kept, |D'|, and
    the `exact` row keys), training losses (to `loss_rel`) and store log of the run that
    never stopped."""
    a, b = metrics_rows(uninterrupted), metrics_rows(resumed)
    assert [r["epoch"] for r in b] == list(range(epochs))
    keys = ("phase", "num_kept", "num_candidates", *exact)
    for ra, rb in zip(a, b):
        assert [ra[k] for k in keys] == [rb[k] for k in keys], f"epoch {ra['epoch']}"
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=loss_rel)
    assert store_log(uninterrupted) == store_log(resumed)
