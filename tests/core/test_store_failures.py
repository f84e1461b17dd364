"""What the store does when it is edited, unwritable, half-created or shared (issue 15, items
7, 8, 9, 12). Each failure is a typed ScanStoreError naming the path, or a documented recovery
with a warning; none leaves the pruner ahead of its store.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from scan_core import (LossStore, ScanConfig, ScanPruner, ScanStoreCorruptError, ScanStoreError)
from tests.core.streams import LossStream, run

N, B = 300, 50
STREAM = LossStream(seed=8)
CFG = ScanConfig(seed=3)


def make_run(path, epochs: int) -> ScanPruner:
    pruner = ScanPruner(N, 2, CFG, store=path)
    run(pruner, epochs, STREAM, B)
    return pruner


def fingerprints(pruner: ScanPruner, stop: int) -> list[str]:
    return [r.fingerprint for r in run(pruner, stop, STREAM, B)]


def uninterrupted(stop: int) -> list[str]:
    return fingerprints(ScanPruner(N, 2, CFG), stop)


def newest_attrs_path(path) -> str:
    snaps = sorted(os.listdir(os.path.join(path, "snapshots")))
    snaps = [s for s in snaps if s.startswith("epoch_")]
    return os.path.join(path, "snapshots", snaps[-1], "zarr.json")


def edit_state(path, **changes) -> None:
    target = newest_attrs_path(path)
    with open(target, encoding="utf-8") as fh:
        doc = json.load(fh)
    doc["attributes"]["state"].update(changes)
    with open(target, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)


# -- item 9: the state record is checksummed ---------------------------------------------------

@pytest.mark.parametrize("change", [{"visits_kept": 1}, {"next_epoch": 3},
                                    {"warmup_prev_loss": 9.5}, {"schedule_floor": 0.5}],
                         ids=lambda c: ",".join(c))
def test_an_edited_state_record_is_corruption(tmp_path, change):
    """fails on main: edited visits_kept / next_epoch were accepted silently."""
    path = tmp_path / "run.zarr"
    make_run(path, 6)
    edit_state(path, **change)
    with pytest.raises(ScanStoreCorruptError, match="state record of epoch_00000005"):
        ScanPruner(N, 2, CFG, store=path)


def test_a_snapshot_from_before_state_checksums_still_opens_with_a_warning(tmp_path):
    path = tmp_path / "run.zarr"
    make_run(path, 6)
    target = newest_attrs_path(path)
    with open(target, encoding="utf-8") as fh:
        doc = json.load(fh)
    del doc["attributes"]["state_checksum"]
    with open(target, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    with pytest.warns(UserWarning, match="not verified"):
        pruner = ScanPruner(N, 2, CFG, store=path)
    assert pruner.next_epoch == 6
    assert fingerprints(pruner, 10) == uninterrupted(10)[6:]


def test_the_state_checksum_survives_non_finite_scalars(tmp_path):
    """warmup_prev_loss can be inf / the log holds None: the checksum is over what JSON reads."""
    path = tmp_path / "run.zarr"
    pruner = make_run(path, 1)
    assert pruner.log[0]["warmup_ended_at"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ScanPruner(N, 2, CFG, store=path)
    assert again.next_epoch == 1
    assert LossStore.open(path, LossStore.read_meta(path), writable=False).epochs() == [0]
