"""open_clip's --resume latest|PATH and --save-frequency N on our run directory
(common/resume_flag.py, rundir.RunDir.write_checkpoint)."""

from __future__ import annotations

import json
import os

import pytest

from reference_trainers.common.config import build_parser
from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR
from reference_trainers.common.openclip_flags import add_open_clip_flags, apply_open_clip_flags
from reference_trainers.common.rundir import RunDir


def parse(argv):
    parser = add_open_clip_flags(build_parser("clip"))
    return apply_open_clip_flags(parser.parse_args(argv), parser)


def refused(argv, capsys, parser=None):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv) if parser is None else parser.parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _run_dir(tmp_path, epochs=(0, 1, 2)):
    run = RunDir(tmp_path / "run")
    run.write_config({"save_frequency": None}, resume=False)
    for epoch in epochs:
        run.write_checkpoint(epoch, b"weights %d" % epoch)
    return run


def test_resume_latest_and_paths_resolve_to_the_run_directory(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert parse(["--out", "o"]).resume is False
    for argv in (["--resume"], ["--resume", "latest"]):
        args = parse(argv + ["--out", "o"])
        assert (args.resume, args.out) == (True, "o")
    args = parse(["--resume", str(run.path)])
    assert (args.resume, args.out) == (True, str(run.path))
    newest = run.checkpoint_path(2)
    args = parse(["--resume", str(newest), "--logs", str(tmp_path), "--name", "run"])
    assert (args.resume, args.out) == (True, str(run.path))
    assert "newest checkpoint is" in refused(["--resume", str(run.checkpoint_path(1))], capsys)
    assert "no such directory" in refused(["--resume", str(tmp_path / "nope")], capsys)
    assert f"--out is {tmp_path / 'x'}" in refused(
        ["--resume", str(run.path), "--out", str(tmp_path / "x")], capsys)
    moco = build_parser("moco")  # without open_clip's flags: --out, or --resume RUN
    assert moco.parse_args(["--resume", str(run.path)]).out == str(run.path)
    assert "--out DIR (or --resume RUN)" in refused([], capsys, parser=moco)


@pytest.mark.parametrize("every, kept", [(None, [2, 3]), (2, [1, 2, 3]), (1, [0, 1, 2, 3])])
def test_save_frequency_keeps_every_kth_epoch_besides_the_two_newest(tmp_path, every, kept):
    run = RunDir(tmp_path / "run")
    run.write_config({"save_frequency": every}, resume=False)
    for epoch in range(4):
        run.write_checkpoint(epoch, b"w")
    assert [e for e, _ in run.checkpoints()] == kept


def test_a_clip_run_resumed_by_path_keeps_its_save_frequency_checkpoints(tmp_path):
    if not os.path.isdir(DEFAULT_FASHION_MNIST_DIR):
        pytest.skip("Fashion-MNIST is not installed")
    from reference_trainers.clip import train as clip_train

    run = tmp_path / "run"
    argv = ["--preset", "cpu-tiny", "--num-train", "256", "--num-test", "100", "--batch-size",
            "64", "--epochs", "4", "--threads", "1", "--quiet", "--save-frequency", "2"]
    assert clip_train.main(argv + ["--out", str(run), "--stop-after", "2"]) == 0
    assert clip_train.main(argv + ["--resume", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert [e for e, _ in RunDir(run).checkpoints()] == [1, 2, 3]
