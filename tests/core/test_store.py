"""The Zarr v3 loss store: its layout, resume, refusal of foreign stores, and damage.

A kill leaves at worst an incomplete newest snapshot: it is skipped with a warning and the
run resumes from the snapshot before, with plans identical to an uninterrupted run. Damage to a
snapshot marked complete, or to the root metadata, is corruption: ScanStoreCorruptError.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import zarr

import scan_core.store as store_module
from scan_core import (ScanConfig, ScanPruner, ScanResumeError, ScanStoreCorruptError,
                       ScanStoreMismatchError, run_ranks)
from tests.core.streams import LossStream, run

N, B, E = 300, 50, 9
STREAM = LossStream(seed=51)
CFG = ScanConfig(seed=2)


def snapshot_dirs(path) -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(path, "snapshots")) if n != "zarr.json")


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def make_run(path, epochs=E, config=CFG, **kw) -> ScanPruner:
    pruner = ScanPruner(N, 2, config, store=path, **kw)
    run(pruner, epochs, STREAM, B)
    return pruner


@pytest.fixture(scope="module")
def uninterrupted():
    pruner = ScanPruner(N, 2, CFG)
    return [r.fingerprint for r in run(pruner, E + 4, STREAM, B)], pruner.candidate_ids()


def continue_and_compare(path, start: int, uninterrupted) -> None:
    fps, final = uninterrupted
    pruner = ScanPruner(N, 2, CFG, store=path)
    assert pruner.next_epoch == start
    got = [r.fingerprint for r in run(pruner, E + 4, STREAM, B)]
    assert got == fps[start:]
    np.testing.assert_array_equal(pruner.candidate_ids(), final)


# -- layout ------------------------------------------------------------------------------------

def test_layout_root_meta_and_the_two_newest_complete_snapshots(tmp_path):
    path = tmp_path / "run.zarr"
    make_run(path)
    root = read_json(path / "zarr.json")
    assert root["zarr_format"] == 3 and root["node_type"] == "group"
    meta = root["attributes"]["meta"]
    assert root["attributes"]["scan_store"] == 1
    assert (meta["num_samples"], meta["num_views"], meta["world_size"]) == (N, 2, 1)
    assert meta["config"] == CFG.to_dict()
    assert snapshot_dirs(path) == [f"epoch_{E - 2:08d}", f"epoch_{E - 1:08d}"]
    for name in snapshot_dirs(path):
        attrs = read_json(path / "snapshots" / name / "zarr.json")["attributes"]
        assert attrs["complete"] is True
        assert attrs["state"]["next_epoch"] == int(name.split("_")[1]) + 1
        assert {"red_bits", "ill_bits"} <= set(attrs["checksums"])
        for key in attrs["checksums"]:
            assert (path / "snapshots" / name / key / "zarr.json").exists()
    group = zarr.open_group(str(path), mode="r")
    red = np.asarray(group[f"snapshots/epoch_{E - 1:08d}/red_bits"][...])
    assert red.dtype == np.uint8 and red.shape == ((N + 7) // 8,)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_loss_history_holds_each_preparation_epoch_with_nan_where_unseen(tmp_path, dtype):
    path = tmp_path / "run.zarr"
    pruner = ScanPruner(N, 2, CFG, store=path, loss_history=dtype)
    unseen = np.arange(0, N, 11)
    recs = run(pruner, E, STREAM, B, skip=lambda ids: ids[~np.isin(ids, unseen)])
    preps = [r.epoch for r in recs if r.phase == "prepare"]
    assert len(preps) >= 2
    assert sorted(os.listdir(path / "history")) == sorted(
        [f"epoch_{e:08d}" for e in preps] + ["zarr.json"])
    group = zarr.open_group(str(path), mode="r")
    for e in preps:
        losses = np.asarray(group[f"history/epoch_{e:08d}/losses"][...])
        assert losses.dtype == np.dtype(dtype) and losses.shape == (2, N)
        assert np.isnan(losses[:, unseen]).all()
        seen = np.setdiff1d(np.arange(N), unseen)
        expected = np.asarray(STREAM.losses(e, seen), np.float32).astype(dtype)
        np.testing.assert_array_equal(losses[:, seen], expected)


def test_no_history_without_loss_history(tmp_path):
    path = tmp_path / "run.zarr"
    make_run(path)
    assert not (path / "history").exists()


# -- resume ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stop", [1, 4, E])
def test_resume_from_store_starts_after_the_last_completed_epoch(tmp_path, stop, uninterrupted):
    path = tmp_path / "run.zarr"
    make_run(path, epochs=stop)
    last = max(int(n.split("_")[1]) for n in snapshot_dirs(path))
    assert last == stop - 1
    continue_and_compare(path, last + 1, uninterrupted)


def test_an_empty_directory_becomes_a_new_store(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    assert ScanPruner(N, 2, CFG, store=path).next_epoch == 0
    assert (path / "zarr.json").exists()


@pytest.mark.parametrize("change, field", [
    ({"config": CFG.replace(seed=3)}, "config.seed"),
    ({"config": CFG.replace(rule="static")}, "config.rule"),
    ({"config": CFG.replace(rho_high=0.2)}, "config.rho_high"),
    ({"num_samples": N + 1}, "num_samples"),
    ({"num_views": 1}, "num_views"),
])
def test_a_store_of_another_run_is_refused_naming_the_field(tmp_path, change, field):
    path = tmp_path / "run.zarr"
    make_run(path, epochs=2)
    args = {"num_samples": N, "num_views": 2, "config": CFG, **change}
    with pytest.raises(ScanStoreMismatchError, match=field.replace(".", r"\.")) as info:
        ScanPruner(args["num_samples"], args["num_views"], args["config"], store=path)
    assert isinstance(info.value, OSError)
    # nothing was written to the foreign store
    assert snapshot_dirs(path) == ["epoch_00000000", "epoch_00000001"]


def test_world_size_changed_on_resume_is_refused(tmp_path):
    path = tmp_path / "run.zarr"
    make_run(path, epochs=2)

    def rank(comm):
        return ScanPruner(N, 2, CFG, store=path, communicator=comm).next_epoch

    with pytest.raises(ScanResumeError, match="world_size=1"):
        run_ranks(2, rank)

    path2 = tmp_path / "two.zarr"

    def two(comm):
        pruner = ScanPruner(N, 2, CFG, store=path2, communicator=comm)
        run(pruner, 2, STREAM, B, rank=comm.rank, world_size=comm.world_size)

    run_ranks(2, two)
    with pytest.raises(ScanResumeError, match="world_size=2"):
        ScanPruner(N, 2, CFG, store=path2)


# -- kills and damage --------------------------------------------------------------------------

def _newest(path) -> str:
    return os.path.join(path, "snapshots", snapshot_dirs(path)[-1])


def _assert_skip_warning(record, name: str) -> None:
    texts = [str(w.message) for w in record]
    assert any(name in t and "resum" in t for t in texts), texts


def _drop_zarr_json(snap):
    os.remove(os.path.join(snap, "zarr.json"))


def _truncate_zarr_json(snap):
    target = os.path.join(snap, "zarr.json")
    with open(target, encoding="utf-8") as fh:
        text = fh.read()
    with open(target, "w", encoding="utf-8") as fh:
        fh.write(text[: len(text) // 2])


def _incomplete_without_chunk(snap):
    target = os.path.join(snap, "zarr.json")
    doc = read_json(target)
    doc["attributes"]["complete"] = False
    with open(target, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    os.remove(os.path.join(snap, "red_bits", "c", "0"))


def _attrs_never_written(snap):
    target = os.path.join(snap, "zarr.json")
    doc = read_json(target)
    doc["attributes"] = {}
    with open(target, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)


@pytest.mark.parametrize("damage", [_incomplete_without_chunk, _attrs_never_written,
                                    _drop_zarr_json, _truncate_zarr_json],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_half_written_newest_snapshot_is_skipped_with_a_warning(tmp_path, damage,
                                                                   uninterrupted):
    path = tmp_path / "run.zarr"
    make_run(path, epochs=6)
    newest = _newest(path)
    damage(newest)
    with pytest.warns(UserWarning) as record:
        continue_and_compare(path, 5, uninterrupted)
    _assert_skip_warning(record, "epoch_00000005")


def test_a_kill_inside_write_snapshot_resumes_from_the_previous_epoch(tmp_path, monkeypatch,
                                                                       uninterrupted):
    path = tmp_path / "run.zarr"
    pruner = make_run(path, epochs=6)
    # let one array be written and checksummed, die after the second is written
    calls = {"n": 0}
    real_crc = store_module._crc

    class Killed(BaseException):
        pass

    def dying_crc(array):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed()
        return real_crc(array)

    monkeypatch.setattr(store_module, "_crc", dying_crc)
    for ids in np.array_split(pruner.plan_epoch(6).shard(0, 1), N // B):
        pruner.record(ids, STREAM.losses(6, ids))
    with pytest.raises(Killed):
        pruner.end_epoch()
    monkeypatch.setattr(store_module, "_crc", real_crc)
    assert os.path.isdir(os.path.join(path, "snapshots", "epoch_00000006"))
    with pytest.warns(UserWarning) as record:
        continue_and_compare(path, 6, uninterrupted)
    _assert_skip_warning(record, "epoch_00000006")


def test_a_kill_before_the_first_snapshot_completes_starts_afresh(tmp_path, monkeypatch,
                                                                   uninterrupted):
    path = tmp_path / "run.zarr"
    pruner = ScanPruner(N, 2, CFG, store=path)
    plan = pruner.plan_epoch(0)
    pruner.record(plan.kept_ids, STREAM.losses(0, plan.kept_ids))

    def dying_update(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(zarr.core.attributes.Attributes, "update", dying_update)
    with pytest.raises(KeyboardInterrupt):
        pruner.end_epoch()
    monkeypatch.undo()
    with pytest.warns(UserWarning) as record:
        continue_and_compare(path, 0, uninterrupted)
    _assert_skip_warning(record, "epoch_00000000")


@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_damaged_chunk_of_a_completed_snapshot_is_corruption(tmp_path, where):
    path = tmp_path / "run.zarr"
    make_run(path, epochs=6)
    chunk = os.path.join(_newest(path), "ill_bits", "c", "0")
    data = bytearray(open(chunk, "rb").read())
    data[len(data) // 2 if where == "middle" else -1] ^= 0x5A
    with open(chunk, "wb") as fh:
        fh.write(bytes(data))
    with pytest.raises(ScanStoreCorruptError, match="ill_bits") as info:
        ScanPruner(N, 2, CFG, store=path)
    assert isinstance(info.value, OSError)


def test_a_missing_chunk_of_a_completed_snapshot_is_corruption(tmp_path):
    path = tmp_path / "run.zarr"
    make_run(path, epochs=6)
    os.remove(os.path.join(_newest(path), "red_bits", "c", "0"))
    with pytest.raises(ScanStoreCorruptError, match="red_bits"):
        ScanPruner(N, 2, CFG, store=path)


@pytest.mark.parametrize("content", ['{"attrib', "", '{"attributes": {"meta": 1}}', "[1, 2]"])
def test_a_corrupt_root_zarr_json_is_corruption(tmp_path, content):
    path = tmp_path / "run.zarr"
    make_run(path, epochs=2)
    with open(path / "zarr.json", "w", encoding="utf-8") as fh:
        fh.write(content)
    with pytest.raises(ScanStoreCorruptError, match="zarr.json"):
        ScanPruner(N, 2, CFG, store=path)


def test_a_non_empty_directory_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    (path / "images.tar").write_bytes(b"not a store")
    with pytest.raises(ScanStoreCorruptError, match="zarr.json"):
        ScanPruner(N, 2, CFG, store=path)
    assert sorted(os.listdir(path)) == ["images.tar"]


def test_a_plain_zarr_group_is_not_a_scan_store(tmp_path):
    path = tmp_path / "other.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=3).attrs.update({"hello": 1})
    with pytest.raises(ScanStoreCorruptError, match="scan_store"):
        ScanPruner(N, 2, CFG, store=path)


def test_a_copied_store_resumes_identically(tmp_path, uninterrupted):
    path = tmp_path / "run.zarr"
    make_run(path, epochs=5)
    shutil.copytree(path, tmp_path / "copy.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        continue_and_compare(tmp_path / "copy.zarr", 5, uninterrupted)


def test_resume_epoch_picks_the_snapshot_a_checkpoint_matches(tmp_path):
    """A model checkpoint of epoch e resumes the pruner from the store's snapshot of e even when
    the store already holds e + 1 (killed between the snapshot and the checkpoint)."""
    import numpy as np
    from scan_core import ScanConfig, ScanPruner, ScanResumeError

    def run(pruner, epochs):
        rng = np.random.default_rng(7)
        for e in range(pruner.next_epoch, epochs):
            plan = pruner.plan_epoch(e)
            ids = plan.kept_ids
            pruner.record(ids, rng.random((2, len(ids))) + np.arange(len(ids)) % 5)
            pruner.end_epoch()
        return pruner

    cfg = ScanConfig(warmup_epochs=1)
    path = tmp_path / "s.zarr"
    run(ScanPruner(500, 2, cfg, store=path), 4)
    at2 = ScanPruner(500, 2, cfg, store=path, resume_epoch=2)
    assert at2.next_epoch == 3
    reference = run(ScanPruner(500, 2, cfg), 3)
    assert at2.state_dict()["red_bits"].tolist() == reference.state_dict()["red_bits"].tolist()
    with pytest.raises(ScanResumeError, match="no completed snapshot of epoch 0"):
        ScanPruner(500, 2, cfg, store=path, resume_epoch=0)
    assert ScanPruner(500, 2, cfg, store=path, resume_epoch=-1).next_epoch == 0
    assert ScanPruner(500, 2, cfg, store=path).next_epoch == 0  # the abandoned future is gone
