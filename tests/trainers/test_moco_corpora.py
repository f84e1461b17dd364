"""MoCo on image-only corpora (a folder tree, a CSV of paths, image-only tar shards), built here
from Fashion-MNIST test images: ids stay stable, bad images are skipped with a count, pruned
samples are never decoded, a resume replays the same plans; and MoCo's precision / compile."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import pathlib
import tarfile

import numpy as np
import pytest
import torch

pytest.importorskip("PIL", reason="the corpus readers decode with Pillow (pip install pillow)")
from PIL import Image  # noqa: E402

from adapters.torch import ScanSampler  # noqa: E402
from reference_trainers.common.config import build_parser, config_from_args  # noqa: E402
from reference_trainers.common.corpora import (CsvCorpus, ImageFolderCorpus,  # noqa: E402
                                               ImageSpec, ShardIndex, ShardStream, csv_corpus,
                                               make_shards, shards)
from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR, read_idx  # noqa: E402
from reference_trainers.common.errors import DataError, TrainerError  # noqa: E402
from reference_trainers.moco import train as moco_train  # noqa: E402
from scan_core import EpochPlan, bitset  # noqa: E402

IMAGES_FILE = pathlib.Path(DEFAULT_FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")
LABELS_FILE = pathlib.Path(DEFAULT_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")
pytestmark = pytest.mark.skipif(not IMAGES_FILE.is_file(),
                                reason=f"Fashion-MNIST is not installed in "
                                       f"{DEFAULT_FASHION_MNIST_DIR}")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle-boot")
N = 120
# Small and fast: the probe / kNN use 200 Fashion-MNIST training and 100 test images.
ARGS = ["--preset", "cpu-tiny-moco", "--num-train", "200", "--num-test", "100",
        "--batch-size", "16", "--scan-warmup-epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def fmnist():
    return read_idx(IMAGES_FILE)[:N], read_idx(LABELS_FILE)[:N].astype(np.int64)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def plan_dropping(n: int, dropped, epoch: int = 3) -> EpochPlan:
    dropped = np.asarray(sorted(dropped), dtype=np.int64)
    bits = bitset.from_ids(dropped, n) if len(dropped) else None
    return EpochPlan(epoch, "mutate", 0.5, n, len(dropped), n - len(dropped), seed=0,
                     drop_bits=bits)


def rows_of(out) -> list[dict]:
    return [json.loads(x) for x in (pathlib.Path(out) / "metrics.jsonl").read_text().splitlines()]


def store_log(out):
    from scan_core import LossStore

    path = pathlib.Path(out) / "scan.zarr"
    return LossStore.open(path, LossStore.read_meta(path), writable=False).load_latest()["log"]


@pytest.fixture
def tree(tmp_path, fmnist):
    """root/<class>/<i>.png for N images; one corrupt image, one broken link, one empty file,
    a text file (not an image: no id)."""
    images, labels = fmnist
    root = tmp_path / "tree"
    for i, (pixels, label) in enumerate(zip(images, labels)):
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(png(pixels))
    (root / "bag" / "zz-corrupt.png").write_bytes(b"\x89PNG not really")
    os.symlink(root / "nowhere.png", root / "coat" / "zz-link.png")
    (root / "dress" / "zz-empty.png").write_bytes(b"")
    (root / "dress" / "notes.txt").write_text("not an image")
    return root


# ------------------------------------------------------------------------------ the readers
def test_folder_ids_are_sorted_paths_with_class_labels_and_bad_files_skipped(tree):
    corpus = ImageFolderCorpus(tree, spec=ImageSpec.cpu())
    relative = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png")
                      if p.is_file() or p.is_symlink())
    assert corpus.relative == relative and len(corpus) == len(relative)
    assert corpus.class_names == tuple(sorted(CLASSES))
    for i in (0, 17, len(corpus) - 1):
        assert corpus.class_names[corpus.labels[i]] == corpus.relative[i].split("/")[0]
    link, empty = corpus.relative.index("coat/zz-link.png"), \
        corpus.relative.index("dress/zz-empty.png")
    assert corpus.skipped == {link: "missing file coat/zz-link.png (a broken link)",
                              empty: "empty file dress/zz-empty.png"}
    corrupt = corpus.relative.index("bag/zz-corrupt.png")
    images, ids = corpus.raw_batch(np.array([corrupt, 0, link, 1]), fill_bad=False)
    assert ids.tolist() == [0, 1] and images.shape == (2, 1, 28, 28) and images.dtype == torch.uint8
    assert "decode" in corpus.skipped[corrupt] and len(corpus.skipped) == 3
    images, ids = corpus.raw_batch(np.array([corrupt, 2, link, 3]), fill_bad=True)
    assert ids.tolist() == [2, 3, 2, 3] and corpus.repeats == 2
    again = ImageFolderCorpus(tree, spec=ImageSpec.cpu())  # the same tree: the same ids
    assert again.relative == corpus.relative and again.fingerprint == corpus.fingerprint


def test_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="ImageNet-style"):
        ImageFolderCorpus(tmp_path / "none", spec=ImageSpec.cpu())
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="folder:.*train"):
        ImageFolderCorpus(tmp_path, spec=ImageSpec.cpu())
    with pytest.raises(DataError, match="no images"):
        ImageFolderCorpus(tmp_path / "train", spec=ImageSpec.cpu())


def test_csv_image_only_needs_no_caption_column(tmp_path, fmnist):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png(fmnist[0][i]))
    (tmp_path / "a.csv").write_text("image\n0.png\n1.png\nmissing.png\n2.png\n")
    corpus = CsvCorpus(tmp_path / "a.csv", spec=ImageSpec.cpu(), tokenizer=None,
                       caption_column=None)
    assert corpus.captions is None and corpus.skipped == {2: "missing file missing.png"}
    images, tokens, ids = corpus.batch(np.arange(4), augment=False)
    assert ids.tolist() == [0, 1, 3] and tokens.shape == (3, 0) and images.shape[0] == 3
    (tmp_path / "b.csv").write_text("image,caption\n0.png,\n1.png,a bag\n")  # ignored captions
    corpus = CsvCorpus(tmp_path / "b.csv", spec=ImageSpec.cpu(), tokenizer=None,
                       caption_column=None)
    assert not corpus.skipped


def test_image_only_shards_from_a_folder_stream_without_captions(tree, tmp_path, monkeypatch,
                                                                 capsys):
    out = tmp_path / "shards"
    assert make_shards.main(["--from-folder", str(tree), "--no-captions", "--out", str(out),
                             "--samples-per-shard", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == N + 2 and report["skipped"] == {}  # a broken link is no file
    with tarfile.open(sorted(out.glob("*.tar"))[0]) as tar:
        assert not [m for m in tar.getnames() if m.endswith(".txt")]
    index = ShardIndex.open(out)
    assert not index.good.any() and index.good_for(False).all()  # no .txt: image-only use only
    assert index.keys[0].startswith("ankle-boot/")  # the class folder leads the key
    decoded = []
    real = shards.decode_image
    monkeypatch.setattr(shards, "decode_image",
                        lambda data, spec: decoded.append(data) or real(data, spec))
    dropped = set(range(0, len(index), 3))
    stream = ShardStream(index, tokenizer=None, spec=ImageSpec.cpu(), captions=False,
                         shuffle_buffer=0)
    served = [(image.shape, tokens.shape, i)
              for image, tokens, i in stream.iter_worker(plan_dropping(len(index), dropped))]
    ids = {i for _, _, i in served}
    corrupt = {int(index.id_of(k)) for k in ("bag/zz-corrupt", "dress/zz-empty")} - dropped
    assert ids == set(range(len(index))) - dropped - corrupt
    assert all(s == (1, 28, 28) and t == (0,) for s, t, _ in served)
    assert len(decoded) == len(served) + len(corrupt)  # kept ones (+ top-ups); pruned: never
    with pytest.raises(DataError, match="tokenizer"):
        ShardStream(index, tokenizer=None, spec=ImageSpec.cpu())


# ------------------------------------------------------------------------------ training
def _capture_plans_and_decodes(monkeypatch):
    """Record, per epoch, the plan's kept ids and the ids the corpus decoded."""
    epochs: list[tuple[set, list]] = []
    real_set_epoch, real_load = ScanSampler.set_epoch, csv_corpus.PathCorpus.load_image

    def set_epoch(self, epoch):
        real_set_epoch(self, epoch)
        epochs.append((set(self.plan.kept_ids.tolist()), []))

    def load_image(self, i):
        epochs[-1][1].append(i)
        return real_load(self, i)

    monkeypatch.setattr(ScanSampler, "set_epoch", set_epoch)
    monkeypatch.setattr(csv_corpus.PathCorpus, "load_image", load_image)
    return epochs


def test_moco_trains_on_a_folder_tree_skipping_bad_images_and_never_decoding_pruned_ones(
        tree, tmp_path, monkeypatch):
    epochs = _capture_plans_and_decodes(monkeypatch)
    out = tmp_path / "run"
    assert moco_train.main(ARGS + ["--epochs", "4", "--data", f"folder:{tree}",
                                   "--out", str(out)]) == 0
    rows = rows_of(out)
    assert len(rows) == 4 and any(r["num_kept"] < len(epochs[0][0]) for r in rows)
    corpus = ImageFolderCorpus(tree, spec=ImageSpec.cpu())
    bad_at_load = set(corpus.skipped)
    corrupt = corpus.relative.index("bag/zz-corrupt.png")
    for (kept, decoded), row in zip(epochs, rows):
        assert set(decoded) <= kept - bad_at_load                # pruned ids: never opened
        assert set(decoded) | bad_at_load | {corrupt} >= kept    # every kept good id is
        assert row["skipped_samples"] == 3                       # link, empty, corrupt
        assert row["samples"] == row["num_kept"]                 # bad slots refilled
    bad = bad_at_load | {corrupt}  # each bad slot of a batch is refilled with a repeat
    assert [r["repeated_samples"] for r in rows] == [len(kept & bad) for kept, _ in epochs]
    assert sum(corrupt in decoded for _, decoded in epochs) == 1  # found once, then left out
    labels = np.load(out / "corpus_labels.npz")
    assert labels["class_names"].tolist() == sorted(CLASSES)
    assert labels["labels"].tolist() == corpus.labels.tolist()
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["knn_top1"] <= 1 and 0 <= summary["linear_probe_top1"] <= 1


def test_resume_on_a_corpus_replays_the_same_plans_and_refuses_a_changed_tree(tree, tmp_path,
                                                                              capsys):
    args = ARGS + ["--epochs", "4", "--data", f"folder:{tree}", "--eval-every", "0"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert moco_train.main(args + ["--out", str(full)]) == 0
    assert moco_train.main(args + ["--out", str(resumed), "--stop-after", "2"]) == 0
    assert moco_train.main(args + ["--out", str(resumed), "--resume"]) == 0
    a, b = rows_of(full), rows_of(resumed)
    assert [r["epoch"] for r in b] == list(range(4))
    for ra, rb in zip(a, b):
        assert (ra["phase"], ra["num_kept"], ra["num_candidates"], ra["steps"]) == \
            (rb["phase"], rb["num_kept"], rb["num_candidates"], rb["steps"])
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)
        # per epoch, so a resume does not restart the count (it did: cumulative per process)
        assert rb["repeated_samples"] == ra["repeated_samples"]
    assert sum(r["repeated_samples"] for r in b[2:]) > 0     # the resumed epochs refilled
    assert store_log(full) == store_log(resumed)
    capsys.readouterr()
    (tree / "bag" / "new.png").write_bytes((tree / "bag" / "zz-corrupt.png").read_bytes())
    assert moco_train.main(args + ["--out", str(full), "--resume"]) == 2
    assert "corpus changed" in capsys.readouterr().err


def test_moco_trains_on_image_only_shards_and_a_csv(tmp_path, fmnist):
    shard_dir = tmp_path / "shards"
    assert make_shards.main(["--from-fashion-mnist", "--no-captions", "--num-samples", "96",
                             "--samples-per-shard", "40", "--out", str(shard_dir)]) == 0
    out = tmp_path / "shards-run"
    assert moco_train.main(ARGS + ["--epochs", "3", "--data", f"shards:{shard_dir}",
                                   "--eval-every", "0", "--out", str(out)]) == 0
    rows = rows_of(out)
    assert any(r["num_kept"] < 96 for r in rows)
    for r in rows:
        assert r["samples"] == r["num_kept"] and r["skipped_samples"] == 0
        assert r["repeated_samples"] == 0
        batches = -(-r["num_kept"] // 16)
        assert r["steps"] == batches - (r["num_kept"] % 16 == 1)  # a lone last sample folds
    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(png(fmnist[0][i]))
    (tmp_path / "x.csv").write_text("image\n" + "".join(f"{i % 6}.png\n" for i in range(40)))
    out = tmp_path / "csv-run"
    assert moco_train.main(ARGS + ["--epochs", "1", "--data", f"csv:{tmp_path / 'x.csv'}",
                                   "--out", str(out)]) == 0
    assert rows_of(out)[-1]["samples"] == 40


def test_a_bad_data_spec_is_a_clear_error(tmp_path, capsys):
    assert moco_train.main(ARGS + ["--data", "imagenet", "--out", str(tmp_path / "a")]) == 2
    assert "folder:DIR" in capsys.readouterr().err
    assert moco_train.main(ARGS + ["--data", f"folder:{tmp_path}", "--duplicate-share", "0.1",
                                   "--out", str(tmp_path / "b")]) == 2
    assert "Fashion-MNIST only" in capsys.readouterr().err


# ----------------------------------------------------------------- precision and compile
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_moco_runs_under_autocast_on_the_cpu(tmp_path, precision):
    """bf16 autocast on the CPU; fp16 too, unscaled (a GradScaler only exists on CUDA), as
    the CLIP trainer does (common/accel.AmpSetup)."""
    out = tmp_path / precision
    assert moco_train.main(ARGS + ["--epochs", "1", "--num-train", "48", "--precision",
                                   precision, "--out", str(out)]) == 0
    row = rows_of(out)[-1]
    assert row["steps"] == 3 and np.isfinite(row["train_loss"])


def test_moco_refuses_an_unknown_precision(tmp_path, capsys):
    assert moco_train.main(ARGS + ["--precision", "fp8", "--out", str(tmp_path)]) == 2
    assert "fp32, bf16, fp16" in capsys.readouterr().err


def test_moco_compile_runs_and_resumes(tmp_path, monkeypatch):
    """--compile goes through common/accel.maybe_compile; Dynamo's eager backend here keeps
    the test fast (no C++ build), the wiring (checkpoint keys, resume) is the same."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    out = tmp_path / "compiled"
    args = ARGS + ["--epochs", "2", "--num-train", "48", "--compile", "--out", str(out)]
    assert moco_train.main(args + ["--stop-after", "1"]) == 0
    state = torch.load(next((out / "checkpoints").glob("*.pt")), weights_only=False)
    assert all(k.startswith("_orig_mod.") for k in state["model"])
    assert moco_train.main(args + ["--resume"]) == 0
    assert [r["epoch"] for r in rows_of(out)] == [0, 1]


def test_a_flag_the_trainer_config_does_not_take_is_a_clear_error():
    """Every common flag is a MoCo field now; the refusal still names the flag for a preset
    whose config lacks the field."""
    @dataclasses.dataclass(frozen=True)
    class Bare:
        preset: str = "bare"

    presets = {"bare": Bare}
    args = build_parser("prog", presets=presets, flags=[], default_preset="bare").parse_args(
        ["--compile", "--out", "x"])
    with pytest.raises(TrainerError, match="--compile: not supported by the bare"):
        config_from_args(args, presets=presets, flags=[])


def test_every_rank_refuses_a_changed_corpus_and_an_unchanged_one_is_not_rewritten(tree,
                                                                                   tmp_path):
    """A resume checks the corpus on every rank (rank 1 went on alone before, and hung at
    its first collective while rank 0 stopped); rank 0 rewrites nothing when it is unchanged,
    so another rank never reads a half-written corpus.json."""
    from reference_trainers.common.corpus_record import check_corpus
    from reference_trainers.common.rundir import RunDir
    from reference_trainers.moco import data as moco_data

    views = moco_data.moco_views(0.2)
    run_dir = RunDir(tmp_path / "run")

    def corpus():
        return moco_data.CorpusCrops(ImageFolderCorpus(str(tree), spec=ImageSpec.cpu()), views)

    check_corpus(run_dir, corpus(), resume=False)
    record = run_dir.path / "corpus.json"
    stamp = record.stat().st_mtime_ns
    check_corpus(run_dir, corpus(), resume=True, write=False)  # rank 1, unchanged
    check_corpus(run_dir, corpus(), resume=True)                # rank 0, unchanged
    assert record.stat().st_mtime_ns == stamp
    (tree / "bag" / "added.png").write_bytes((tree / "bag" / "zz-corrupt.png").read_bytes())
    for write in (False, True):                                 # rank 1, rank 0
        with pytest.raises(TrainerError, match="corpus changed"):
            check_corpus(run_dir, corpus(), resume=True, write=write)
