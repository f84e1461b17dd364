"""What --resume does with a damaged or incomplete run directory (issue 15, items 10, 11, 13,
14, 15): the newest (checkpoint, snapshot) pair that both verify, a warning for what was
passed over, and a clear error naming the file when nothing can be continued exactly."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
import torch

from reference_trainers.common.errors import CheckpointError, ResumeError, RunDirError
from reference_trainers.common.lifecycle import load_checkpoint, save_checkpoint
from reference_trainers.common.rundir import RunDir
from tests.trainers.runfiles import snapshot


def _parts(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optimizer, torch.Generator().manual_seed(seed)


def _run_with_epochs(tmp_path, *epochs):
    """A run directory with checkpoints and snapshots of `epochs`, each of another model."""
    run = RunDir(tmp_path / "run")
    models = {}
    for epoch in epochs:
        model, optimizer, generator = _parts(epoch)
        save_checkpoint(run, epoch, model, optimizer, generator, float(epoch))
        models[epoch] = model
    snapshot(run, *epochs)
    return run, models


def _load(run):
    model, optimizer, generator = _parts(99)
    return load_checkpoint(run, model, optimizer, generator), model


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _empty(path):
    path.write_bytes(b"")


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, inside the tensors: torch.load would accept it
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _empty, _flip])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, damage):
    """Fails on main: a truncated or emptied file raised a raw torch error, a flipped byte
    loaded silently. Now the checksum file beside it catches all three."""
    run, models = _run_with_epochs(tmp_path, 3, 4)
    damage(run.checkpoint_path(4))
    with pytest.warns(UserWarning, match=r"resuming after epoch 3.*epoch_00000004\.pt fails "
                                         r"its checksum"):
        (epoch, wall), model = _load(run)
    assert (epoch, wall) == (3, 3.0) and _same(model, models[3])


def test_every_checkpoint_damaged_is_a_resume_error_naming_each(tmp_path):
    run, _ = _run_with_epochs(tmp_path, 3, 4)
    _truncate(run.checkpoint_path(3))
    _empty(run.checkpoint_path(4))
    with pytest.raises(ResumeError, match=r"no checkpoint can be resumed.*epoch_00000004\.pt.*"
                                          r"epoch_00000003\.pt"):
        _load(run)


def test_an_incomplete_newest_snapshot_resumes_from_the_older_pair(tmp_path):
    """Item 10, fails on main ('the checkpoint and the store belong to different runs'): the
    newest snapshot lost its commit record, the older snapshot and checkpoint are intact."""
    run, models = _run_with_epochs(tmp_path, 3, 4)
    os.remove(run.store / "snapshots" / "epoch_00000004" / "zarr.json")
    with pytest.warns(UserWarning, match="resuming after epoch 3.*no completed snapshot"):
        (epoch, _), model = _load(run)
    assert epoch == 3 and _same(model, models[3])


def test_snapshots_deleted_under_checkpoints_are_refused_with_the_way_out(tmp_path):
    """Item 11, fails on main (a silent restart): the pruner's state is gone."""
    run, _ = _run_with_epochs(tmp_path, 3, 4)
    shutil.rmtree(run.store / "snapshots")
    with pytest.raises(ResumeError, match=r"epochs \[3, 4\].*no completed store snapshot.*"
                                          r"delete .*checkpoints"):
        _load(run)


def test_checkpoints_deleted_under_snapshots_restart_from_epoch_0_with_a_warning(tmp_path):
    """Item 11, fails on main (no word): the weights are gone; the run starts over."""
    run, _ = _run_with_epochs(tmp_path, 3, 4)
    for path in (run.path / "checkpoints").iterdir():
        path.unlink()
    with pytest.warns(UserWarning, match=r"snapshots of epochs \[3, 4\].*starts over from "
                                         "epoch 0"):
        (epoch, wall), _ = _load(run)
    assert (epoch, wall) == (-1, 0.0)


def test_a_checkpoint_without_its_checksum_file_loads_with_a_warning(tmp_path):
    """A run written before checksums existed still resumes."""
    run, models = _run_with_epochs(tmp_path, 3)
    os.remove(str(run.checkpoint_path(3)) + ".crc32")
    with pytest.warns(UserWarning, match="no checksum file"):
        (epoch, _), model = _load(run)
    assert epoch == 3 and _same(model, models[3])


def test_each_rank_generator_is_saved_and_one_process_restores_its_own(tmp_path):
    run, _ = _run_with_epochs(tmp_path, 0)
    state = torch.load(run.checkpoint_path(0), weights_only=False)
    assert len(state["generators"]) == 1
    assert torch.equal(state["generators"][0], torch.Generator().manual_seed(0).get_state())


# -- the run directory's own files (items 14 and 15) ----------------------------------------
def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    """Fails on main (raw JSONDecodeError): what a kill during an append leaves."""
    run = RunDir(tmp_path / "run")
    run.append_metrics({"epoch": 0, "x": 1})
    run.append_metrics({"epoch": 1, "x": 2})
    with open(run.path / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "x"')
    with pytest.warns(UserWarning, match="line 3 is cut short"):
        assert run.read_metrics() == [{"epoch": 0, "x": 1}, {"epoch": 1, "x": 2}]
    with pytest.warns(UserWarning):
        run.truncate_metrics(1)
    assert run.read_metrics() == [{"epoch": 0, "x": 1}, {"epoch": 1, "x": 2}]


def test_a_damaged_metrics_line_before_the_last_is_an_error_naming_it(tmp_path):
    run = RunDir(tmp_path / "run")
    (run.path / "metrics.jsonl").write_text('{"epoch": 0}\n{"epo\n{"epoch": 2}\n')
    with pytest.raises(RunDirError, match=r"metrics\.jsonl: line 2 is damaged"):
        run.read_metrics()


@pytest.mark.parametrize("text", ['{"preset": "cpu-tiny", "se', "", "[1, 2]"])
def test_a_garbled_config_is_an_error_naming_the_file(tmp_path, text):
    """Fails on main: a raw JSONDecodeError."""
    run = RunDir(tmp_path / "run")
    (run.path / "config.json").write_text(text)
    with pytest.raises(RunDirError, match=r"config\.json is damaged"):
        run.write_config({"preset": "cpu-tiny"}, resume=True)


def test_out_that_is_a_file_or_lies_under_one_is_an_error_naming_it(tmp_path):
    """Fails on main: FileExistsError / NotADirectoryError tracebacks."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(RunDirError, match=f"{afile} is a file"):
        RunDir(afile)
    with pytest.raises(RunDirError, match=f"{afile}/run.*part of the path is a file"):
        RunDir(afile / "run")


def test_a_read_only_out_is_an_error_naming_it(tmp_path, monkeypatch):
    """Fails on main: the first write raised a bare OSError [Errno 30]. (Tests run as root
    here, so the read-only file system is simulated at the write.)"""
    real_write = type(tmp_path).write_bytes

    def read_only(self, data):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(type(tmp_path), "write_bytes", read_only)
    with pytest.raises(RunDirError, match=f"cannot write in the run directory {tmp_path}/run: "
                                          "the file system is read-only"):
        RunDir(tmp_path / "run")
    monkeypatch.setattr(type(tmp_path), "write_bytes", real_write)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_at_a_checkpoint_is_said_as_such_and_loses_nothing(tmp_path):
    """Fails on main: 'RuntimeError: basic_ios::clear: iostream error'. The checkpoint's
    temporary file is a link to /dev/full, whose every write fails with ENOSPC."""
    run, models = _run_with_epochs(tmp_path, 3)
    tmp = run.checkpoint_path(4).with_name("epoch_00000004.pt.tmp")
    os.symlink("/dev/full", tmp)
    model, optimizer, generator = _parts(4)
    with pytest.raises(RunDirError, match=r"cannot write the checkpoint .*epoch_00000004\.pt: "
                                          "the disk is full"):
        save_checkpoint(run, 4, model, optimizer, generator, 4.0)
    (epoch, _), restored = _load(run)  # the previous checkpoint is intact
    assert epoch == 3 and _same(restored, models[3])


def test_a_checksum_file_that_is_unreadable_is_a_checkpoint_error(tmp_path):
    run, _ = _run_with_epochs(tmp_path, 3)
    (run.path / "checkpoints" / "epoch_00000003.pt.crc32").write_text("{")
    with pytest.raises(CheckpointError, match="checksum file .*unreadable"):
        run.read_checkpoint(run.checkpoint_path(3))
