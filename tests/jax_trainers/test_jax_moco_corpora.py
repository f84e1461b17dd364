"""The JAX MoCo trainer on the user's data (issue 17): image-only corpora (`--data folder: |
csv: | shards:`, jax/moco_data.py) read by id and decoded per batch, bad samples skipped and
counted as the PyTorch trainer counts them, pruned samples never decoded, resume exact; kNN and
the linear probe on the user's labelled folder (`--eval-folder`) without Fashion-MNIST, a run
with no evaluation, `--report-to tensorboard`, and no torch imported on the way."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")
PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("braceexpand")

from adapters.jax import PlanSampler  # noqa: E402
from reference_trainers.common.corpora.arrays import CorpusArrays, ImageLoader  # noqa: E402
from reference_trainers.common.corpora.images import ImageSpec  # noqa: E402
from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR, read_idx  # noqa: E402
from reference_trainers.common.errors import DataError, TrainerError  # noqa: E402
from reference_trainers.jax import moco as jax_moco  # noqa: E402
from reference_trainers.jax import moco_data  # noqa: E402
from tests.trainers.runfiles import assert_resumed_equals_uninterrupted, metrics_rows  # noqa: E402

IMAGES_FILE = Path(DEFAULT_FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")
LABELS_FILE = Path(DEFAULT_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")
pytestmark = pytest.mark.skipif(not IMAGES_FILE.is_file(), reason="Fashion-MNIST not installed")
ROOT = Path(__file__).parents[2]
CLASSES = {"bag": 8, "boot": 9, "shirt": 6}
ARGS = ["--framework", "jax", "--preset", "cpu-tiny-moco", "--batch-size", "16",
        "--scan-warmup-epochs", "1", "--threads", "1", "--quiet"]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def labelled_tree(root: Path, per_class: int, offset: int = 0) -> Path:
    """root/<class>/<j>.png with Fashion-MNIST test images of that class."""
    images, labels = read_idx(IMAGES_FILE), read_idx(LABELS_FILE)
    for name, label in CLASSES.items():
        (root / name).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(labels == label)[offset:offset + per_class]):
            (root / name / f"{j:03d}.png").write_bytes(png(images[i]))
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    """20 images a class, plus a corrupt image, a broken link, an empty file and a text file
    (no id)."""
    root = labelled_tree(tmp_path / "tree", 20)
    (root / "bag" / "zz-corrupt.png").write_bytes(b"\x89PNG not really")
    os.symlink(root / "nowhere.png", root / "boot" / "zz-link.png")
    (root / "shirt" / "zz-empty.png").write_bytes(b"")
    (root / "shirt" / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------------------------- the readers
def test_a_folder_tree_serves_good_ids_for_bad_ones_and_counts_them_per_epoch(tree):
    data = moco_data.corpus_images(f"folder:{tree}")
    relative = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png"))
    assert data.listing == relative and data.num_samples == 63
    assert data.class_names == ("bag", "boot", "shirt")
    assert data.labels.tolist() == [("bag", "boot", "shirt").index(r.split("/")[0])
                                    for r in relative]
    link, empty, corrupt = (relative.index(r) for r in
                            ("boot/zz-link.png", "shirt/zz-empty.png", "bag/zz-corrupt.png"))
    assert set(data.skipped_samples()) == {link, empty}  # found when listed
    ids = np.array([0, corrupt, link, 5])
    served = data.served_ids(ids)
    assert served.tolist() == [0, 0, 5, 5]          # bad slots: the batch's good ids, in turn
    pixels = data.images[served]
    assert pixels.shape == (4, 1, 28, 28) and pixels.dtype == np.uint8
    assert (pixels[1] == pixels[0]).all() and not (pixels[0] == pixels[3]).all()
    assert data.epoch_stats(None) == {"skipped_samples": 3, "repeated_samples": 2}
    data.served_ids(np.array([corrupt, 1]))  # known bad now: not decoded again, still a repeat
    assert data.epoch_stats(None) == {"skipped_samples": 3, "repeated_samples": 1}  # per epoch
    source, reason = data.skipped_samples()[corrupt]
    assert source == str(tree / "bag" / "zz-corrupt.png") and reason.startswith("decode: ")
    torch_corpus = pytest.importorskip("reference_trainers.common.corpora")
    same = torch_corpus.ImageFolderCorpus(tree, spec=torch_corpus.ImageSpec.cpu())
    assert same.relative == data.listing and same.skipped == {
        i: r for i, (_, r) in data.skipped_samples().items() if i != corrupt}  # same ids


_PIXELS = np.arange(12 * 784, dtype=np.uint8).reshape(12, 28, 28) * 7
_PNGS = [png(x) for x in _PIXELS]
_BAD_AT_LOAD, _BAD_AT_DECODE = {2: "missing file 2.png"}, {5, 9}


@given(st.lists(st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=8), min_size=1,
                         max_size=4), min_size=1, max_size=3))
def test_served_batches_keep_good_ids_in_place_and_count_every_refill_in_its_epoch(epochs):
    """Invariants of CorpusImages.served_ids / epoch_stats over any epochs of id batches: a good
    id keeps its slot and its pixels; a bad slot holds a good id of the same batch (in turn)
    with that id's pixels; an epoch's `repeated_samples` is its own bad slots; a batch of bad
    ids only is a DataError naming the source."""
    arrays = CorpusArrays([f"{i}.png" for i in range(12)], [""] * 12,
                          lambda i: b"junk" if i in _BAD_AT_DECODE else _PNGS[i],
                          _BAD_AT_LOAD, spec=ImageSpec.cpu(),
                          tokenizer=moco_data._NoCaptions(), source="twelve")
    data = moco_data.CorpusImages(arrays, listing=None)
    bad = set(_BAD_AT_LOAD) | _BAD_AT_DECODE
    for batches in epochs:
        refills = 0
        for ids in map(np.array, batches):
            good = [i for i in ids.tolist() if i not in bad]
            if not good:
                with pytest.raises(DataError, match="twelve"):
                    data.served_ids(ids)
                continue
            served = data.served_ids(ids)
            pixels = data.images[served]
            is_bad = np.isin(ids, list(bad))
            assert (served[~is_bad] == ids[~is_bad]).all()
            assert served[is_bad].tolist() == [good[j % len(good)]
                                               for j in range(int(is_bad.sum()))]
            assert (pixels[:, 0] == _PIXELS[served]).all()
            refills += int(is_bad.sum())
        stats = data.epoch_stats(None)
        assert stats["repeated_samples"] == refills
        assert stats["skipped_samples"] == len(data.skipped_samples()) <= len(bad)


def test_a_csv_needs_no_caption_column_and_image_only_shards_no_txt(tmp_path):
    from reference_trainers.common.corpora import make_shards

    images = read_idx(IMAGES_FILE)[:10]
    rows = ["image"]
    for i, pixels in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(png(pixels))
        rows.append(f"{i}.png" if i != 4 else "gone.png")
    (tmp_path / "images.csv").write_text("\n".join(rows) + "\n")
    data = moco_data.corpus_images(f"csv:{tmp_path / 'images.csv'}")
    assert data.num_samples == 10 and list(data.skipped_samples()) == [4]
    assert (data.images[np.array([3])][0, 0] == images[3]).all()  # 28 x 28 grey: as stored

    shards = tmp_path / "shards"
    assert make_shards.main(["--from-fashion-mnist", "--num-samples", "48", "--no-captions",
                             "--samples-per-shard", "24", "--out", str(shards)]) == 0
    (shards / "scan-index.npz").unlink()
    os.chmod(shards, 0o555)  # a read-only dataset: the index goes to the run directory
    try:
        run = tmp_path / "run"
        run.mkdir()
        data = moco_data.corpus_images(f"shards:{shards}/shard-{{000000..000001}}.tar",
                                       run_path=run, train_num_samples=48)
        assert data.num_samples == 48 and data.skipped_samples() == {}
        assert data.images[np.array([0, 47])].shape == (2, 1, 28, 28)
        assert (run / "scan-index.npz").is_file() and data.disk_corpus() is None
        with pytest.raises(DataError, match="cannot seek.*--framework torch"):
            moco_data.corpus_images(f"shards:pipe:cat {shards}/shard-000000.tar", run_path=run)
    finally:
        os.chmod(shards, 0o755)


def test_the_evaluation_sets_read_no_fashion_mnist_unless_the_run_needs_it(tree, tmp_path,
                                                                          monkeypatch):
    from reference_trainers.common.moco_config import MocoConfig
    from reference_trainers.common.user_sets import no_moco_evaluation_note

    val = labelled_tree(tmp_path / "val", 6, offset=100)
    (tmp_path / "no-fmnist").mkdir()  # reading Fashion-MNIST here would fail
    cfg = MocoConfig(data=f"folder:{tree}", eval_folder=str(val), seed=3,
                     data_dir=str(tmp_path / "no-fmnist"))
    bank, scored = moco_data.build_eval_sets(cfg, moco_data.build_data(cfg))
    assert bank.class_names == scored.class_names == ("bag", "boot", "shirt")
    assert np.bincount(bank.labels).tolist() == np.bincount(scored.labels).tolist() == [3] * 3
    assert bank.images.dtype == np.uint8 and bank.images.shape == (9, 1, 28, 28)
    assert no_moco_evaluation_note(cfg, False) is None
    # No set of its own and no Fashion-MNIST installed: the run trains only, and says how not.
    monkeypatch.setattr("reference_trainers.common.data.DEFAULT_FASHION_MNIST_DIR",
                        str(tmp_path / "nowhere"))
    bare = MocoConfig(data=f"folder:{tree}")
    assert moco_data.build_eval_sets(bare, moco_data.build_data(bare)) is None
    assert "--eval-folder DIR" in no_moco_evaluation_note(bare, False)
    with pytest.raises(TrainerError, match="--duplicate-share 0.1 plants duplicates"):
        moco_data.build_data(MocoConfig(data=f"folder:{tree}", duplicate_share=0.1))
    with pytest.raises(TrainerError, match="folder:DIR, csv:PATH, shards:SOURCE"):
        moco_data.build_data(MocoConfig(data="imagenet"))


def test_the_data_and_evaluation_sets_import_no_torch(tree, tmp_path):
    val = labelled_tree(tmp_path / "val", 4, offset=50)
    code = f"""
import sys
import numpy as np
from reference_trainers.common.moco_config import MocoConfig
from reference_trainers.jax import moco_data
cfg = MocoConfig(data="folder:{tree}", eval_folder="{val}", data_dir="{tmp_path}")
data = moco_data.build_data(cfg)
assert data.images[data.served_ids(np.arange(4))].shape == (4, 1, 28, 28)
bank, scored = moco_data.build_eval_sets(cfg, data)
assert len(bank) + len(scored) == 12
assert 'torch' not in sys.modules, 'torch imported'
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr


def test_what_the_jax_moco_trainer_still_refuses_names_the_way_out(tree, tmp_path, capsys):
    out = tmp_path / "run"
    for extra, words in ((["--data", f"folder:{tree}", "--workers", "-1"],
                          ("--workers -1", "expected an integer >= 0")),
                         (["--report-to", "wandb"], ("--report-to wandb", "not supported")),
                         (["--data", f"folder:{tree}", "--duplicate-share", "0.1"],
                          ("Fashion-MNIST only",))):
        assert jax_moco.main(ARGS + extra + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err
    assert not (out / "config.json").exists()  # refused before the run directory is written


# ----------------------------------------------------------------------------------- the runs
def _capture_plans_and_decodes(monkeypatch) -> list[tuple[set, list]]:
    """Per epoch: the plan's kept ids and the ids the corpus decoded."""
    epochs: list[tuple[set, list]] = []
    real_set_epoch, real_load = PlanSampler.set_epoch, ImageLoader.__call__

    def set_epoch(self, epoch):
        real_set_epoch(self, epoch)
        epochs.append((set(self.plan.kept_ids.tolist()), []))

    def load(self, i):  # every image a corpus reads and decodes goes through its loader
        if epochs:
            epochs[-1][1].append(i)
        return real_load(self, i)

    monkeypatch.setattr(PlanSampler, "set_epoch", set_epoch)
    monkeypatch.setattr(ImageLoader, "__call__", load)
    return epochs


def test_a_folder_run_without_evaluation_skips_bad_images_never_decodes_pruned_ones_and_resumes(
        tree, tmp_path, monkeypatch, capsys):
    """fails on main: '--data folder:... not supported with --framework jax'."""
    monkeypatch.setattr("reference_trainers.common.data.DEFAULT_FASHION_MNIST_DIR",
                        str(tmp_path / "nowhere"))  # no evaluation set at all
    epochs = _capture_plans_and_decodes(monkeypatch)
    args = ARGS + ["--epochs", "4", "--data", f"folder:{tree}"]
    full = tmp_path / "full"
    assert jax_moco.main(args + ["--out", str(full)]) == 0
    assert "no evaluation set" in capsys.readouterr().out
    rows = metrics_rows(full)
    assert len(rows) == len(epochs) == 4 and any(r["num_kept"] < 63 for r in rows)
    relative = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png"))
    bad_at_load = {relative.index("boot/zz-link.png"), relative.index("shirt/zz-empty.png")}
    corrupt = relative.index("bag/zz-corrupt.png")
    for (kept, decoded), row in zip(epochs, rows):
        assert set(decoded) <= kept - bad_at_load                # pruned ids: never opened
        assert set(decoded) | bad_at_load | {corrupt} >= kept    # every kept good id is
        assert row["skipped_samples"] == 3                       # link, empty, corrupt
        assert row["samples"] == row["num_kept"]                 # bad slots refilled
        assert "knn_top1" not in row and "linear_probe_top1" not in row
    bad = bad_at_load | {corrupt}
    assert [r["repeated_samples"] for r in rows] == [len(kept & bad) for kept, _ in epochs]
    assert sum(corrupt in decoded for _, decoded in epochs) == 1  # found once, then left out
    listed = [json.loads(x) for x in (full / "skipped.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in listed) == sorted(bad)
    labels = np.load(full / "corpus_labels.npz")
    assert labels["class_names"].tolist() == ["bag", "boot", "shirt"]
    summary = json.loads((full / "summary.json").read_text())
    assert summary["knn_top1"] is None and summary["linear_probe_top1"] is None
    # Resume: stopped after 2 epochs, continued: the unbroken run's plans, rows and losses.
    resumed = tmp_path / "resumed"
    assert jax_moco.main(args + ["--out", str(resumed), "--stop-after", "2"]) == 0
    assert jax_moco.main(args + ["--out", str(resumed), "--resume"]) == 0
    assert_resumed_equals_uninterrupted(
        full, resumed, epochs=4, loss_rel=1e-6,
        exact=("steps", "samples", "momentum", "skipped_samples", "repeated_samples"))
    assert sum(r["repeated_samples"] for r in metrics_rows(resumed)[2:]) > 0
    for ra, rb in zip(metrics_rows(full), metrics_rows(resumed)):  # every key, timing aside
        assert ra.keys() == rb.keys()
        for key in ra.keys() - {"seconds", "wall_seconds"}:
            assert rb[key] == (pytest.approx(ra[key], rel=1e-6) if isinstance(ra[key], float)
                               else ra[key]), key
    # --workers 2: the batches decoded ahead in two processes, the same run.
    workers = tmp_path / "workers"
    assert jax_moco.main(args + ["--out", str(workers), "--workers", "2"]) == 0
    assert "decoded in 2 worker processes" in capsys.readouterr().out
    for ra, rb in zip(metrics_rows(full), metrics_rows(workers), strict=True):
        assert {k: v for k, v in ra.items() if k not in ("seconds", "wall_seconds")} == \
            {k: v for k, v in rb.items() if k not in ("seconds", "wall_seconds")}
    (tree / "bag" / "new.png").write_bytes((tree / "bag" / "000.png").read_bytes())
    assert jax_moco.main(args + ["--out", str(full), "--resume"]) == 2
    assert "corpus changed" in capsys.readouterr().err


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow  # two JAX MoCo runs (stopped and resumed) in a fresh process: ~2 min here
def test_image_only_shards_on_a_read_only_folder_evaluated_on_a_labelled_folder_with_tensorboard(
        tmp_path):
    """issue 17's MoCo run: `--framework jax --data shards:'DIR/{00000..00001}.tar'
    --eval-folder VALDIR --report-to tensorboard`, with no Fashion-MNIST file and no torch.
    fails on main: '--data shards:... --eval-folder ... --report-to ... not supported'."""
    pytest.importorskip("tensorboard")
    from reference_trainers.common.corpora import make_shards

    shards = tmp_path / "shards"
    assert make_shards.main(["--from-fashion-mnist", "--num-samples", "96", "--no-captions",
                             "--samples-per-shard", "48", "--out", str(shards)]) == 0
    (shards / "scan-index.npz").unlink()
    listing = sorted(p.name for p in shards.iterdir())
    val = labelled_tree(tmp_path / "val", 6)
    (tmp_path / "no-fmnist").mkdir()
    out = tmp_path / "run"
    args = ARGS + ["--epochs", "3", "--eval-every", "1", "--probe-every", "1",
                   "--data", f"shards:{shards}/shard-{{000000..000001}}.tar",
                   "--train-num-samples", "96", "--eval-folder", str(val),
                   "--data-dir", str(tmp_path / "no-fmnist"), "--report-to", "tensorboard",
                   "--out", str(out)]
    code = f"""
import sys
from reference_trainers.jax import moco
assert moco.main({args!r} + ["--stop-after", "1"]) == 0
assert moco.main({args!r} + ["--resume"]) == 0
assert 'torch' not in sys.modules, 'torch imported'
"""
    os.chmod(shards, 0o555)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.chmod(shards, 0o755)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in shards.iterdir()) == listing  # the dataset was only read
    assert (out / "scan-index.npz").is_file()
    rows = metrics_rows(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert all(r["samples"] == r["num_kept"] and r["skipped_samples"] == 0 for r in rows)
    for row in rows:  # 9 scored images (a seeded half of 6 a class): multiples of 1/9
        for key in ("knn_top1", "linear_probe_top1"):
            assert 0 <= row[key] <= 1 and round(row[key] * 9, 6) == round(row[key] * 9)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["knn_top1"] == rows[-1]["knn_top1"]
    scalars = read_scalars(out / "tensorboard")
    total_steps = sum(r["steps"] for r in rows)
    assert [s for s, _ in scalars["train/loss"]] == list(range(total_steps))  # across resume
    losses = [v for _, v in scalars["train/loss"][:rows[0]["steps"]]]
    assert np.mean(losses) == pytest.approx(rows[0]["train_loss"], rel=1e-5)  # 6 x 16
    for key in ("knn_top1", "linear_probe_top1"):
        assert scalars[f"eval/{key}"] == [(r["epoch"], pytest.approx(r[key])) for r in rows]
    assert [v for _, v in scalars["scan/phase"]] == [0, 1, 2]


@pytest.mark.slow  # two processes launched once: ~2 min on the 2 shared cores
@pytest.mark.distributed
def test_two_processes_share_a_folder_corpus_and_evaluate_on_the_labelled_folder(tree, tmp_path):
    """Each process decodes only its own ids of the plan (DistributedSampler's share of the
    kept ids); process 0 alone writes the rows, skipped.jsonl and the evaluation."""
    from tests.jax_trainers.test_jax_processes import launch

    val = labelled_tree(tmp_path / "val", 6, offset=100)
    out = tmp_path / "two"
    done = launch("moco", ARGS + ["--batch-size", "8", "--epochs", "3", "--data",
                                  f"folder:{tree}", "--eval-folder", str(val), "--out", str(out)])
    assert all(code == 0 for code, _ in done), "\n".join(text[-3000:] for _, text in done)
    assert "kNN top-1" in done[0][1] and "kNN top-1" not in done[1][1]
    rows = metrics_rows(out)
    assert [r["phase"] for r in rows] == ["warmup", "prepare", "mutate"]
    for row in rows:  # the global batch: both processes' equal shares, padded by wrapping
        assert row["world_size"] == 2
        assert row["num_kept"] <= row["samples"] < row["num_kept"] + 2
        assert row["skipped_samples"] >= 2  # the link and the empty file, found when listed
    assert rows[-1]["num_kept"] < 63
    assert 0 <= rows[-1]["knn_top1"] <= 1 and 0 <= rows[-1]["linear_probe_top1"] <= 1
    listed = [json.loads(x)["source"] for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert {str(tree / "boot" / "zz-link.png"), str(tree / "shirt" / "zz-empty.png")} <= set(listed)
