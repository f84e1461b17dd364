"""Evaluation on the user's own data: retrieval and zero-shot maths (retrieval_maths.py), the
torch wiring (user_eval.py) on stub towers whose right answers are known, and CLIP runs on a
corpus that need no Fashion-MNIST file."""

import json
import pathlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_trainers.common.corpora import ImageSpec
from reference_trainers.common.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from reference_trainers.common.errors import DataError
from reference_trainers.common.retrieval_maths import (FOLDER_TEMPLATES, class_names_for,
                                                       folder_prompts, recall_at_k,
                                                       topk_accuracy)
from reference_trainers.common.user_eval import UserEvaluation

PIL = pytest.importorskip("PIL.Image")


# ------------------------------------------------------------------------------ the maths
def brute_force_recall(images, texts, k):
    """Recall@k by sorting each row (ties against the correct item)."""
    sim = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ \
        (texts / np.linalg.norm(texts, axis=1, keepdims=True)).T
    hits = 0
    for i, row in enumerate(sim):
        better_or_equal = [j for j in range(len(row)) if j != i and row[j] >= row[i]]
        hits += len(better_or_equal) < k
    return hits / len(sim)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(1, 6), st.integers(0, 10_000))
def test_recall_matches_a_brute_force_ranking_and_grows_with_k(n, dim, seed):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, dim)).astype(np.float32) + 0.01
    texts = rng.normal(size=(n, dim)).astype(np.float32) + 0.01
    scores = recall_at_k(images, texts, ks=(1, 2, 5, n))
    for k in (1, 2, 5):
        i2t, t2i = brute_force_recall(images, texts, k), brute_force_recall(texts, images, k)
        assert scores[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert scores[f"text_to_image_R@{k}"] == pytest.approx(t2i)
    for side in ("image_to_text", "text_to_image"):
        assert scores[f"{side}_R@1"] <= scores[f"{side}_R@2"] <= scores[f"{side}_R@5"]
        assert scores[f"{side}_R@{n}"] == 1.0


def test_recall_of_swapped_pairs_and_of_constant_features():
    feats = np.eye(5, dtype=np.float32)
    swapped = feats[[1, 0, 2, 3, 4]]
    # a swapped pair's own item scores 0, tied with every other: ranked last (4 ahead)
    assert recall_at_k(feats, swapped, ks=(1, 4, 5)) == {
        "image_to_text_R@1": 0.6, "image_to_text_R@4": 0.6, "image_to_text_R@5": 1.0,
        "text_to_image_R@1": 0.6, "text_to_image_R@4": 0.6, "text_to_image_R@5": 1.0}
    same = np.ones((4, 3), np.float32)  # all tied: no item ranks first
    assert recall_at_k(same, same, ks=(1, 4))["image_to_text_R@1"] == 0.0
    with pytest.raises(DataError, match=r"\(3, 2\).*\(4, 2\)"):
        recall_at_k(np.ones((3, 2)), np.ones((4, 2)))


def test_topk_accuracy_counts_ties_against_the_label():
    logits = np.array([[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    assert topk_accuracy(logits, np.array([1, 0, 0]), ks=(1, 2, 3)) == {
        "top1": 1 / 3, "top2": 2 / 3, "top3": 1.0}


def test_class_names_from_folders_or_a_file(tmp_path):
    assert class_names_for(["ankle_boot", "bag"]) == ("ankle boot", "bag")
    names = tmp_path / "classnames.txt"
    names.write_text("boot\n\nhandbag\n")
    assert class_names_for(["ankle_boot", "bag"], names) == ("boot", "handbag")
    with pytest.raises(DataError, match=r"names 2 classes but the folder tree has 3"):
        class_names_for(["a", "b", "c"], names)
    assert folder_prompts(["cat"])[0][0] == "a photo of a cat."
    assert len(folder_prompts(["cat", "dog"])[1]) == len(FOLDER_TEMPLATES)


# ------------------------------------------------------------------- stub towers, torch side
LEVEL = 20  # image j of a stub set is a flat grey of LEVEL * j


def flat_png(path: pathlib.Path, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(np.full((28, 28), level, np.uint8)).save(path)


class StubTokenizer:
    """Encodes a text as the index of the first of `words` it contains (-1: none)."""

    context_length = 1

    def __init__(self, words):
        self.words = list(words)

    def encode(self, texts):
        return np.array([[next((i for i, w in enumerate(self.words) if w in t), -1)]
                         for t in texts], dtype=np.int64)


class StubTowers(torch.nn.Module):
    """encode_image: one-hot of the grey level's index; encode_text: one-hot of the token."""

    def __init__(self, size):
        super().__init__()
        self.size, self.unused = size, torch.nn.Linear(1, 1)

    def encode_image(self, x):
        grey = (x.mean(dim=(1, 2, 3)) * FASHION_MNIST_STD + FASHION_MNIST_MEAN) * 255
        return torch.nn.functional.one_hot((grey / LEVEL).round().long(), self.size).float()

    def encode_text(self, tokens):
        return torch.nn.functional.one_hot(tokens[:, 0].clamp(min=0), self.size).float()


def test_zero_shot_on_a_folder_tree_scores_what_the_class_names_say(tmp_path):
    folders = ["bag", "sandal", "shirt"]
    for c, name in enumerate(folders):
        for j in range(3):
            flat_png(tmp_path / "val" / name / f"{j}.png", LEVEL * c)
    tokenizer = StubTokenizer(folders)
    user = UserEvaluation(imagenet_val=str(tmp_path / "val"), val_data=None, classnames=None,
                          spec=ImageSpec.cpu(), tokenizer=tokenizer)
    assert user(StubTowers(4), torch.device("cpu")) == {"zero_shot_top1": 1.0,
                                                         "zero_shot_top5": 1.0}
    # the classnames file renames the folders: bag's images are now called "shirt"
    (tmp_path / "names.txt").write_text("shirt\nsandal\nbag\n")
    renamed = UserEvaluation(imagenet_val=str(tmp_path / "val"), val_data=None,
                             classnames=str(tmp_path / "names.txt"), spec=ImageSpec.cpu(),
                             tokenizer=tokenizer)
    assert renamed(StubTowers(4), torch.device("cpu"))["zero_shot_top1"] == pytest.approx(1 / 3)


def test_retrieval_on_held_out_pairs_scores_the_pairing(tmp_path):
    words = [f"item{j:02d}" for j in range(8)]
    rows = ["image,caption"]
    for j in range(8):
        flat_png(tmp_path / f"{j}.png", LEVEL * j)
        caption = words[1 - j] if j < 2 else words[j]  # pairs 0 and 1 swap captions
        rows.append(f"{j}.png,a photo of {caption}")
    rows.append("missing.png,a photo of nothing")  # skipped, as in training
    (tmp_path / "val.csv").write_text("\n".join(rows) + "\n")
    user = UserEvaluation(imagenet_val=None, val_data=str(tmp_path / "val.csv"),
                          classnames=None, spec=ImageSpec.cpu(), tokenizer=StubTokenizer(words))
    scores = user(StubTowers(8), torch.device("cpu"))
    # the swapped pairs score 0 for their own item, tied with 6 others: rank 7
    assert scores["image_to_text_R@1"] == scores["text_to_image_R@1"] == 6 / 8
    assert scores["image_to_text_R@5"] == scores["text_to_image_R@5"] == 6 / 8
    assert scores["image_to_text_R@10"] == scores["text_to_image_R@10"] == 1.0


def test_bad_evaluation_flags_are_refused_before_training(tmp_path):
    (tmp_path / "names.txt").write_text("a\n")
    with pytest.raises(DataError, match="--classnames .* --imagenet-val"):
        UserEvaluation(imagenet_val=None, val_data=None, classnames=str(tmp_path / "names.txt"),
                       spec=ImageSpec.cpu(), tokenizer=StubTokenizer([]))
    (tmp_path / "val.csv").write_text("image,caption\nnone.png,a bag\n")
    with pytest.raises(DataError, match="--val-data .*no usable"):
        UserEvaluation(imagenet_val=None, val_data=str(tmp_path / "val.csv"), classnames=None,
                       spec=ImageSpec.cpu(), tokenizer=StubTokenizer([]))


# --------------------------------------------------------------------------- CLIP runs
ARGS = ["--preset", "cpu-tiny", "--batch-size", "16", "--epochs", "2", "--scan-warmup-epochs",
        "1", "--threads", "1", "--quiet"]
CAPTIONS = ("a photo of a bag.", "a shirt.", "a black sneaker.", "trousers on a chair.")


def rows_of(out):
    return [json.loads(x) for x in (pathlib.Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def no_fashion_mnist(tmp_path, monkeypatch):
    """The default Fashion-MNIST folder exists but holds no file (the issue's failure)."""
    from reference_trainers.common import data

    empty = tmp_path / "no-fmnist"
    empty.mkdir()
    monkeypatch.setattr(data, "DEFAULT_FASHION_MNIST_DIR", str(empty))


def write_pairs(folder: pathlib.Path, n: int, name: str) -> pathlib.Path:
    rng = np.random.default_rng(len(name))
    rows = ["image,caption"]
    for i in range(n):
        pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        PIL.fromarray(pixels).save(folder / f"{name}{i}.png")
        rows.append(f"{name}{i}.png,{CAPTIONS[i % 4]}")
    (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return folder / f"{name}.csv"


def test_a_corpus_run_without_fashion_mnist_trains_and_says_it_evaluates_nothing(
        tmp_path, no_fashion_mnist, capsys):
    """fails on main: 'has no train-images-idx3-ubyte file'."""
    from reference_trainers.clip import train as clip_train

    out = tmp_path / "run"
    assert clip_train.main(ARGS + ["--data", f"csv:{write_pairs(tmp_path, 48, 'train')}",
                                   "--out", str(out)]) == 0
    assert "no evaluation set" in capsys.readouterr().out
    rows = rows_of(out)
    assert len(rows) == 2 and all("zero_shot_top1" not in r for r in rows)


def test_a_corpus_run_evaluates_zero_shot_and_retrieval_on_the_user_sets(
        tmp_path, no_fashion_mnist):
    from reference_trainers.clip import train as clip_train

    for c, name in enumerate(["bag", "shirt", "ankle_boot"]):
        for j in range(4):
            flat_png(tmp_path / "val" / name / f"{j}.png", 60 * c + 5 * j)
    out = tmp_path / "run"
    assert clip_train.main(ARGS + ["--data", f"csv:{write_pairs(tmp_path, 48, 'train')}",
                                   "--imagenet-val", str(tmp_path / "val"),
                                   "--val-data", str(write_pairs(tmp_path, 12, 'held')),
                                   "--eval-every", "1", "--out", str(out)]) == 0
    rows = rows_of(out)
    assert len(rows) == 2
    for row in rows:  # every epoch (--eval-every 1)
        assert 0 <= row["zero_shot_top1"] <= row["zero_shot_top5"] == 1.0  # 3 classes
        for side in ("image_to_text", "text_to_image"):
            r1, r5, r10 = (row[f"{side}_R@{k}"] for k in (1, 5, 10))
            assert 0 <= r1 <= r5 <= r10 <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["zero_shot_top1"] == rows[-1]["zero_shot_top1"]


def test_a_run_from_before_these_flags_resumes_and_may_add_evaluation_sets(
        tmp_path, no_fashion_mnist):
    """config.json written before --workers/--imagenet-val/--val-data/--report-to existed
    (their keys absent) resumes; evaluation sets may be added at the resume."""
    from reference_trainers.clip import train as clip_train

    args = ARGS + ["--data", f"csv:{write_pairs(tmp_path, 32, 'train')}",
                   "--out", str(tmp_path / "run")]
    assert clip_train.main(args + ["--stop-after", "1"]) == 0
    config_path = tmp_path / "run" / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("workers", "imagenet_val", "classnames", "val_data", "report_to",
                "warmup_steps"):
        del config[key]
    config_path.write_text(json.dumps(config))
    assert clip_train.main(args + ["--resume", "--val-data",
                                   str(write_pairs(tmp_path, 8, 'held'))]) == 0
    first, last = rows_of(tmp_path / "run")
    assert "image_to_text_R@1" not in first and 0 <= last["image_to_text_R@1"] <= 1
