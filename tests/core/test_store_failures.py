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


# -- item 7: a store that cannot be written is refused at open; end_epoch is atomic ------------

def test_a_store_path_that_is_a_file_is_refused_naming_it(tmp_path):
    """fails on main: a bare NotADirectoryError."""
    path = tmp_path / "scan.zarr"
    path.write_text("not a store")
    with pytest.raises(ScanStoreError, match="is a file") as info:
        ScanPruner(N, 2, CFG, store=path)
    assert str(path) in str(info.value) and isinstance(info.value, OSError)
    assert path.read_text() == "not a store"


def test_a_store_path_under_a_file_is_refused_naming_it(tmp_path):
    (tmp_path / "out").write_text("x")
    path = tmp_path / "out" / "scan.zarr"
    with pytest.raises(ScanStoreError, match="cannot create the SCAN store") as info:
        ScanPruner(N, 2, CFG, store=path)
    assert str(path) in str(info.value)


def _deny_writes(monkeypatch):
    real_link = os.link

    def link(src, dst, *a, **k):
        if str(dst).endswith("writer.lock"):
            raise PermissionError(13, "Permission denied", dst)
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(os, "link", link)


def test_a_store_that_cannot_be_written_is_refused_at_open(tmp_path, monkeypatch):
    """fails on main: the store opened and the first end_epoch raised PermissionError after
    the pruner had advanced. (Root ignores file modes, so the refusal is simulated where the
    open writes first.)"""
    path = tmp_path / "run.zarr"
    make_run(path, 3).close()
    _deny_writes(monkeypatch)
    with pytest.raises(ScanStoreError, match="cannot be written") as info:
        ScanPruner(N, 2, CFG, store=path)
    assert str(path) in str(info.value) and "Permission denied" in str(info.value)
    # reading it is still fine
    assert LossStore.open(path, LossStore.read_meta(path), writable=False).epochs() == [1, 2]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file modes")
def test_a_read_only_store_directory_is_refused_at_open(tmp_path):
    path = tmp_path / "run.zarr"
    make_run(path, 2).close()
    os.chmod(path, 0o555)
    try:
        with pytest.raises(ScanStoreError, match="cannot be written"):
            ScanPruner(N, 2, CFG, store=path)
    finally:
        os.chmod(path, 0o755)


@pytest.mark.parametrize("err", [(13, "Permission denied"), (28, "No space left on device")])
def test_end_epoch_that_cannot_persist_leaves_the_pruner_where_the_store_is(tmp_path,
                                                                            monkeypatch, err):
    """fails on main: the pruner advanced to the next epoch although its snapshot was never
    written, so its state and the store's differed."""
    import scan_core.store as store_module

    path = tmp_path / "run.zarr"
    pruner = make_run(path, 5)
    plan = pruner.plan_epoch(5)
    for ids in np.array_split(plan.shard(0, 1), 6):
        pruner.record(ids, STREAM.losses(5, ids))

    def failing_crc(array):
        raise OSError(err[0], err[1])

    monkeypatch.setattr(store_module, "_crc", failing_crc)
    with pytest.raises(ScanStoreError, match=str(path)) as info:
        pruner.end_epoch()
    if err[0] == 28:
        assert "disk is full" in str(info.value)
    assert pruner.next_epoch == 5 and len(pruner.log) == 5
    monkeypatch.undo()
    assert pruner.end_epoch().epoch == 5  # the cause fixed, the retry closes the epoch
    assert fingerprints(pruner, 10) == uninterrupted(10)[6:]


# -- item 8: creation is atomic; a creation cut short is started afresh ------------------------

def test_a_kill_while_the_store_is_created_leaves_nothing_half_made(tmp_path, monkeypatch):
    """fails on main: the root zarr.json was written twice, and a kill between the writes left
    a root without the SCAN attributes, which every later open refused."""
    import zarr

    path = tmp_path / "run.zarr"

    def killed(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(zarr.core.attributes.Attributes, "update", killed)
    with pytest.raises(KeyboardInterrupt):
        ScanPruner(N, 2, CFG, store=path)
    monkeypatch.undo()
    assert not path.exists() or os.listdir(path) == []
    assert os.listdir(tmp_path) in ([], ["run.zarr"])  # no temporary left beside it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruner = ScanPruner(N, 2, CFG, store=path)
    assert pruner.next_epoch == 0
    assert fingerprints(pruner, 6) == uninterrupted(6)


@pytest.mark.parametrize("leftover", ["nothing", "snapshots", "incomplete_snapshot", "lock"])
def test_a_store_without_root_or_completed_snapshot_starts_afresh(tmp_path, leftover):
    """What a kill during creation left with older versions: neither --resume nor a fresh run
    started (fails on main: ScanStoreCorruptError)."""
    path = tmp_path / "run.zarr"
    path.mkdir()
    if leftover == "nothing":
        (path / "snapshots").mkdir()
    elif leftover == "snapshots":
        (path / "snapshots").mkdir()
        (path / "history").mkdir()
    elif leftover == "incomplete_snapshot":
        (path / "snapshots" / "epoch_00000000").mkdir(parents=True)
        (path / "snapshots" / "epoch_00000000" / "zarr.json").write_text('{"attrib')
    else:
        (path / "snapshots").mkdir()
        (path / "writer.lock").write_text('{"pid": 999999999, "host": "gone"}')
    with pytest.warns(UserWarning, match="creating it afresh"):
        pruner = ScanPruner(N, 2, CFG, store=path)
    assert pruner.next_epoch == 0
    assert fingerprints(pruner, 5) == uninterrupted(5)
    assert LossStore.open(path, LossStore.read_meta(path), writable=False).epochs() == [3, 4]


def test_a_store_without_root_but_with_a_completed_snapshot_is_still_refused(tmp_path):
    path = tmp_path / "run.zarr"
    make_run(path, 3).close()
    os.remove(path / "zarr.json")
    with pytest.raises(ScanStoreCorruptError, match="zarr.json"):
        ScanPruner(N, 2, CFG, store=path)


# -- item 12: one writing process per store ------------------------------------------------------

_HOLDER = """
import sys
sys.path.insert(0, sys.argv[2])
from scan_core import ScanConfig, ScanPruner
pruner = ScanPruner(300, 2, ScanConfig(seed=3), store=sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def other_writer(tmp_path):
    """A second live process holding the store open for writing."""
    import subprocess
    import sys

    path = tmp_path / "run.zarr"
    make_run(path, 2).close()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), repo],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield path, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_while_the_first_lives(other_writer):
    """fails on main: both opened, and the last writer's snapshots won."""
    from scan_core import ScanStoreLockedError

    path, proc = other_writer
    with pytest.raises(ScanStoreLockedError, match=f"pid {proc.pid}") as info:
        ScanPruner(N, 2, CFG, store=path)
    assert str(path) in str(info.value) and isinstance(info.value, ScanStoreError)
    # readers are not writers: the read-only open (other ranks, analysis) still works
    assert LossStore.open(path, LossStore.read_meta(path), writable=False).epochs() == [0, 1]


def test_the_lock_of_a_killed_writer_is_taken_over_with_a_warning(other_writer):
    path, proc = other_writer
    proc.kill()
    proc.wait()
    assert (path / "writer.lock").exists()  # a kill leaves it behind
    with pytest.warns(UserWarning, match=f"taking over the writer lock of pid {proc.pid}"):
        pruner = ScanPruner(N, 2, CFG, store=path)
    lock = json.loads((path / "writer.lock").read_text())
    assert lock["pid"] == os.getpid() and lock["host"]
    assert fingerprints(pruner, 6) == uninterrupted(6)[2:]


def test_a_lock_held_on_another_host_is_refused_naming_the_file(tmp_path):
    from scan_core import ScanStoreLockedError

    path = tmp_path / "run.zarr"
    make_run(path, 2).close()
    (path / "writer.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere-42"}))
    with pytest.raises(ScanStoreLockedError, match="elsewhere-42") as info:
        ScanPruner(N, 2, CFG, store=path)
    assert "writer.lock" in str(info.value) and "delete" in str(info.value)


def test_close_releases_the_lock_and_one_process_may_reopen(tmp_path):
    path = tmp_path / "run.zarr"
    first = make_run(path, 2)
    second = ScanPruner(N, 2, CFG, store=path)  # the same process: a trainer rebuilding it
    assert second.next_epoch == 2
    first.close()
    assert (path / "writer.lock").exists()  # still held by `second`
    second.close()
    assert not (path / "writer.lock").exists()
