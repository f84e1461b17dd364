"""`--report-to tensorboard` (common/tb_report.py): event files a reader gets back, per step
and per epoch, continued across a resume; refusals name the fix."""

import json
import pathlib
import sys

import numpy as np
import pytest

from reference_trainers.common.errors import TrainerError
from reference_trainers.common.tb_report import NullReporter, open_reporter, parse_report_to


def test_report_to_values():
    assert parse_report_to(None) == parse_report_to("none") == parse_report_to("") == ()
    assert parse_report_to("tensorboard") == ("tensorboard",)
    with pytest.raises(TrainerError, match=r"--report-to tensorboard,wandb: wandb is not"):
        parse_report_to("tensorboard,wandb")
    assert isinstance(open_reporter("tensorboard", pathlib.Path("."), rank=1, rows=[]),
                      NullReporter)  # only rank 0 writes


def test_without_tensorboard_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.event_file_writer", None)
    with pytest.raises(TrainerError, match=r"scan-prune\[tensorboard\]"):
        open_reporter("tensorboard", tmp_path, rank=0, rows=[])


def read_scalars(folder: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_run_writes_per_step_and_per_epoch_scalars_and_a_resume_continues_them(tmp_path):
    pytest.importorskip("tensorboard")
    PIL = pytest.importorskip("PIL.Image")
    from reference_trainers.clip import train as clip_train

    rng = np.random.default_rng(0)
    for name, n in (("train", 48), ("held", 10)):
        rows = ["image,caption"]
        for i in range(n):
            PIL.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                tmp_path / f"{name}{i}.png")
            rows.append(f"{name}{i}.png,a {('bag', 'shirt', 'coat')[i % 3]} on a table.")
        (tmp_path / f"{name}.csv").write_text("\n".join(rows) + "\n")
    args = ["--preset", "cpu-tiny", "--batch-size", "16", "--epochs", "3",
            "--scan-warmup-epochs", "1", "--threads", "1", "--quiet", "--eval-every", "1",
            "--data", f"csv:{tmp_path / 'train.csv'}", "--val-data", str(tmp_path / "held.csv"),
            "--report-to", "tensorboard", "--out", str(tmp_path / "run")]
    assert clip_train.main(args + ["--stop-after", "2"]) == 0
    assert clip_train.main(args + ["--resume"]) == 0
    metrics_file = tmp_path / "run" / "metrics.jsonl"
    metrics = [json.loads(x) for x in metrics_file.read_text().splitlines()]
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    total_steps = sum(r["steps"] for r in metrics)
    assert [s for s, _ in scalars["train/loss"]] == list(range(total_steps))  # no gap, no repeat
    for tag in ("train/lr", "train/kept_share"):
        assert len(scalars[tag]) == total_steps
    # the steps' losses, weighted by their batch sizes, give each epoch's train_loss
    first = metrics[0]
    losses = [v for _, v in scalars["train/loss"][:first["steps"]]]
    sizes = [16] * (first["samples"] // 16) + ([first["samples"] % 16] if first["samples"] % 16
                                               else [])
    assert np.dot(losses, sizes) / first["samples"] == pytest.approx(first["train_loss"], 1e-5)
    assert scalars["train/lr"][-1][1] == pytest.approx(metrics[-1]["lr"])
    kept = dict(scalars["train/kept_share"])
    assert kept[total_steps - 1] == pytest.approx(metrics[-1]["kept_share"])
    for key in ("image_to_text_R@1", "text_to_image_R@10"):
        assert scalars[f"eval/{key}"] == [(r["epoch"], pytest.approx(r[key])) for r in metrics]
    assert [v for _, v in scalars["scan/phase"]] == [0, 1, 2]
    assert [v for _, v in scalars["scan/num_kept"]] == [r["num_kept"] for r in metrics]


def test_moco_writes_the_same_scalars_and_a_resume_continues_them(tmp_path):
    pytest.importorskip("tensorboard")
    from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR
    from reference_trainers.moco import train as moco_train

    if not pathlib.Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip("the MoCo trainer's default data is Fashion-MNIST")
    args = ["--preset", "cpu-tiny-moco", "--num-train", "96", "--num-test", "48",
            "--batch-size", "16", "--epochs", "3", "--scan-warmup-epochs", "1", "--threads",
            "1", "--quiet", "--eval-every", "1", "--report-to", "tensorboard",
            "--out", str(tmp_path / "run")]
    assert moco_train.main(args + ["--stop-after", "1"]) == 0
    assert moco_train.main(args + ["--resume"]) == 0
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    total_steps = sum(r["steps"] for r in metrics)
    assert [s for s, _ in scalars["train/loss"]] == list(range(total_steps))
    assert scalars["train/lr"][-1][1] == pytest.approx(metrics[-1]["lr"])
    assert scalars["eval/knn_top1"] == [(r["epoch"], pytest.approx(r["knn_top1"]))
                                        for r in metrics]
    assert [v for _, v in scalars["scan/phase"]] == [0, 1, 2]


def test_moco_refuses_an_unknown_reporter_before_writing(tmp_path, capsys):
    from reference_trainers.moco import train as moco_train

    out = tmp_path / "run"
    assert moco_train.main(["--preset", "cpu-tiny-moco", "--report-to", "wandb", "--quiet",
                            "--out", str(out)]) == 2
    assert "--report-to wandb: wandb is not supported" in capsys.readouterr().err
    assert not out.exists()
