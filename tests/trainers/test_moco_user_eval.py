"""MoCo's kNN and linear probe on the user's labelled ImageFolder (common/moco_user_eval.py):
the seeded half split, a separate bank folder, refusals by name, and a MoCo run on image-only
shards evaluated on a labelled folder without any Fashion-MNIST file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")

from reference_trainers.common.corpora import ImageSpec  # noqa: E402
from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR, read_idx  # noqa: E402
from reference_trainers.common.errors import DataError  # noqa: E402
from reference_trainers.common.moco_user_eval import eval_folder_splits  # noqa: E402

pytestmark = pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
                                reason="Fashion-MNIST not installed")
CLASSES = ("bag", "boot", "shirt")


def labelled_tree(root: Path, per_class: tuple[int, ...], offset: int = 0) -> Path:
    """root/<class>/<i>.png with Fashion-MNIST test images of that class."""
    images = read_idx(Path(DEFAULT_FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(Path(DEFAULT_FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz")
    for name, label, count in zip(CLASSES, (8, 9, 6), per_class):
        (root / name).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(labels == label)[offset:offset + count]):
            PIL.fromarray(images[i]).save(root / name / f"{j}.png")
    return root


def test_the_folder_is_split_per_class_into_a_seeded_half(tmp_path):
    tree = labelled_tree(tmp_path / "val", (5, 4, 7))
    bank, scored = eval_folder_splits(str(tree), None, spec=ImageSpec.cpu(), seed=3)
    assert bank.class_names == scored.class_names == CLASSES and bank.num_classes == 3
    assert np.bincount(bank.labels.numpy()).tolist() == [3, 2, 4]
    assert np.bincount(scored.labels.numpy()).tolist() == [2, 2, 3]
    assert bank.images.shape == (9, 1, 28, 28) and scored.images.dtype.is_floating_point is False
    rows = {bytes(x.numpy()) for x in bank.images} | {bytes(x.numpy()) for x in scored.images}
    assert len(rows) == 16  # every image once, in one half or the other
    again, _ = eval_folder_splits(str(tree), None, spec=ImageSpec.cpu(), seed=3)
    assert (again.images == bank.images).all()
    other, _ = eval_folder_splits(str(tree), None, spec=ImageSpec.cpu(), seed=4)
    assert not (other.images.shape == bank.images.shape and (other.images == bank.images).all())


def test_a_bank_folder_and_what_is_refused(tmp_path):
    tree = labelled_tree(tmp_path / "val", (2, 2, 2))
    train = labelled_tree(tmp_path / "train", (3, 3, 3), offset=10)
    bank, scored = eval_folder_splits(str(tree), str(train), spec=ImageSpec.cpu(), seed=0)
    assert (len(bank), len(scored)) == (9, 6)
    (tmp_path / "train" / "zebra").mkdir()
    PIL.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "train" / "zebra" / "0.png")
    with pytest.raises(DataError, match="must be the same class folders"):
        eval_folder_splits(str(tree), str(train), spec=ImageSpec.cpu(), seed=0)
    lone = labelled_tree(tmp_path / "lone", (1, 2, 2))
    with pytest.raises(DataError, match=r"class 'bag' has 1 decodable image.*--eval-train-folder"):
        eval_folder_splits(str(lone), None, spec=ImageSpec.cpu(), seed=0)


def test_moco_on_image_only_shards_evaluates_on_the_labelled_folder_alone(tmp_path):
    """Issue 17's MoCo run: image-only shards by brace URL in a read-only folder, 2 DataLoader
    workers, a labelled val folder, TensorBoard; no Fashion-MNIST file is read."""
    pytest.importorskip("braceexpand")
    pytest.importorskip("tensorboard")
    from reference_trainers.common.corpora import make_shards
    from reference_trainers.moco import train as moco_train

    shards = tmp_path / "shards"
    assert make_shards.main(["--from-fashion-mnist", "--num-samples", "128", "--no-captions",
                             "--samples-per-shard", "64", "--out", str(shards)]) == 0
    tree = labelled_tree(tmp_path / "val", (6, 6, 6))
    (tmp_path / "no-fmnist").mkdir()  # a run that read Fashion-MNIST would fail here
    run = tmp_path / "run"
    before = sorted(p.name for p in shards.iterdir())
    os.chmod(shards, 0o555)  # the index goes to the run directory, never beside the shards
    try:
        assert moco_train.main([
            "--preset", "cpu-tiny-moco", "--epochs", "1", "--batch-size", "32", "--threads",
            "1", "--quiet", "--data", f"shards:{shards}/shard-{{000000..000001}}.tar",
            "--workers", "2", "--report-to", "tensorboard",
            "--data-dir", str(tmp_path / "no-fmnist"), "--eval-folder", str(tree),
            "--out", str(run)]) == 0
    finally:
        os.chmod(shards, 0o755)
    assert sorted(p.name for p in shards.iterdir()) == before
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["knn_top1"] <= 1.0 and 0.0 <= summary["linear_probe_top1"] <= 1.0
    # 9 scored images: every accuracy is a multiple of 1/9
    assert round(summary["knn_top1"] * 9, 6) == round(summary["knn_top1"] * 9)
    config = json.loads((run / "config.json").read_text())
    assert config["eval_folder"] == str(tree) and config["workers"] == 2
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
