"""open_clip's flag names on the CLIP trainer (common/openclip_flags.py): each maps onto our
setting, conflicts and unsupported values are refused naming the alternative."""

import json
import pathlib

import numpy as np
import pytest

from reference_trainers.common.config import TrainConfig, build_parser
from reference_trainers.common.openclip_flags import (add_open_clip_flags,
                                                      apply_open_clip_flags, warmup_in_epochs)
from reference_trainers.common.schedule import cosine_lr, progress


def parse(argv):
    parser = add_open_clip_flags(build_parser("clip"))
    return apply_open_clip_flags(parser.parse_args(argv), parser)


def refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_open_clip_names_map_onto_ours(tmp_path):
    (tmp_path / "shards").mkdir()
    args = parse(["--train-data", str(tmp_path / "shards"), "--wd", "0.05", "--torchcompile",
                  "--precision", "amp_bf16", "--warmup", "500", "--workers", "4",
                  "--imagenet-val", "val", "--val-data", "held.csv",
                  "--logs", str(tmp_path / "logs"), "--name", "run1"])
    assert args.data == f"shards:{tmp_path / 'shards'}"
    assert (args.weight_decay, args.compile, args.precision) == (0.05, True, "bf16")
    assert (args.warmup_steps, args.workers) == (500, 4)
    assert (args.imagenet_val, args.val_data) == ("val", "held.csv")
    assert args.out == str(tmp_path / "logs" / "run1")
    assert parse(["--train-data", "pairs.tsv", "--out", "o", "--precision", "amp"]).data == \
        "csv:pairs.tsv"
    assert parse(["--train-data", "x.csv", "--out", "o", "--precision", "amp"]).precision == "fp16"
    for url in ("/d/{00000..00003}.tar", "pipe:curl -s x", "/d/a.tar::/e/{0..2}.tar",
                "/d/00000.tar"):  # webdataset URLs: shards (corpora/shard_sources.py)
        assert parse(["--train-data", url, "--out", "o"]).data == f"shards:{url}"
    # our own names are untouched
    ours = parse(["--data", "csv:x.csv", "--weight-decay", "0.2", "--precision", "bf16",
                  "--out", "o"])
    assert (ours.data, ours.weight_decay, ours.precision) == ("csv:x.csv", 0.2, "bf16")


@pytest.mark.parametrize("argv, words", [
    (["--precision", "pure_bf16", "--out", "o"], "use --precision amp_bf16"),
    (["--train-data", "nowhere.parquet", "--out", "o"], "expected a .csv/.tsv file"),
    (["--wd", "0.1", "--weight-decay", "0.2", "--out", "o"], "--wd and --weight-decay"),
    (["--train-data", "a.csv", "--data", "csv:b.csv", "--out", "o"], "--train-data and --data"),
    (["--logs", "l"], "--logs and --name go together"),
    ([], "--out DIR, or --logs DIR --name NAME"),
    (["--warmup", "-3", "--out", "o"], "--warmup -3"),
])
def test_unsupported_or_conflicting_flags_are_refused_by_name(argv, words, capsys):
    assert words in refused(argv, capsys)


@pytest.mark.parametrize("warmup, samples, batch", [(5, 1000, 64), (40, 1000, 64), (1, 10, 4)])
def test_warmup_in_steps_is_linear_over_exactly_those_steps(warmup, samples, batch):
    cfg = warmup_in_epochs(TrainConfig(warmup_steps=warmup, batch_size=batch, lr=1.0,
                                       epochs=20), samples, 1)
    per_epoch = -(-samples // batch)
    for step in range(1, warmup + 1):  # 1-based optimiser steps over full epochs
        done = progress((step - 1) // per_epoch, (step - 1) % per_epoch, per_epoch)
        assert cosine_lr(1.0, done, 20, cfg.lr_warmup_epochs) == pytest.approx(step / warmup)
    assert warmup_in_epochs(TrainConfig(), samples, 1) == TrainConfig()


def test_an_open_clip_command_line_trains(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    from reference_trainers.clip import train as clip_train

    rows = ["image,caption"]
    for i in range(32):
        PIL.fromarray(np.full((28, 28), 7 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a photo of a bag.")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    assert clip_train.main([
        "--preset", "cpu-tiny", "--train-data", str(tmp_path / "pairs.csv"),
        "--val-data", str(tmp_path / "pairs.csv"), "--workers", "1", "--warmup", "3",
        "--wd", "0.05", "--precision", "fp32", "--batch-size", "8", "--epochs", "1",
        "--logs", str(tmp_path / "logs"), "--name", "oc", "--threads", "1", "--quiet"]) == 0
    run = tmp_path / "logs" / "oc"
    config = json.loads((run / "config.json").read_text())
    assert (config["weight_decay"], config["warmup_steps"]) == (0.05, 3)
    assert config["data"] == f"csv:{tmp_path / 'pairs.csv'}"
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["steps"] == 4 and "image_to_text_R@1" in row
