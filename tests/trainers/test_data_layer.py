"""The data protocol (reference_trainers/common/data_layer.py, issue 16): every source the
trainers take implements TrainData, and nothing tells sources apart by `hasattr` again."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL", reason="the corpus readers decode with Pillow (pip install pillow)")

from reference_trainers.common.corpora import ImageSpec, ShardIndex, ShardStream  # noqa: E402
from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR, ImageSplits  # noqa: E402
from reference_trainers.common.data_layer import (Planted, TrainData,  # noqa: E402
                                                  check_train_data)
from reference_trainers.common.torch_data import build_image_text_data  # noqa: E402
from reference_trainers.moco.data import CorpusCrops, ImageData, moco_views  # noqa: E402
from tests.trainers.test_corpora import (TOKENIZE, csv_corpus, fmnist,  # noqa: E402,F401
                                         plan_dropping, shard_dir)

ROOT = Path(__file__).resolve().parents[2]
needs_data = pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
                                reason="Fashion-MNIST not installed")

# hasattr calls that do not choose between data sources: (file, the attribute probed).
ALLOWED_HASATTR = {
    ("reference_trainers/common/tokenizer_choice.py", "encoder"),   # a tokenizer's inner vocab
    ("reference_trainers/common/planted.py", "detach"),             # a torch tensor or numpy
    ("reference_trainers/common/progress.py", "isatty"),            # a stream without isatty
}


def _hasattr_calls() -> set[tuple[str, str]]:
    found = set()
    for path in sorted((ROOT / "reference_trainers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == "hasattr":
                probed = node.args[1].value if len(node.args) > 1 and isinstance(
                    node.args[1], ast.Constant) else ast.unparse(node)
                found.add((path.relative_to(ROOT).as_posix(), probed))
    return found


def test_no_trainer_tells_data_sources_apart_by_hasattr():
    """Fails on main: 13 hasattr branches (clip/train.py, moco/data.py, moco/train.py,
    common/skipped.py, experiments/worker.py) chose between in-memory, CSV, folder and shard
    data. A source is asked through TrainData instead."""
    extra = _hasattr_calls() - ALLOWED_HASATTR
    assert not extra, (f"hasattr calls outside the allowed ones: {sorted(extra)}; ask the data "
                       "object through TrainData (common/data_layer.py) instead")


def test_the_experiments_pass_a_data_object_and_patch_no_module():
    """Fails on main: worker.training_subset swapped clip.train.build_data at run time."""
    from reference_trainers.experiments import worker

    source = inspect.getsource(worker)
    assert "module.build_data =" not in source and "build_data = " not in source
    assert "data" in inspect.signature(__import__(
        "reference_trainers.clip.train", fromlist=["train"]).train).parameters


def _fmnist_like(n: int = 20) -> ImageSplits:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return ImageSplits(images, np.arange(n) % 10, images, np.arange(n) % 10)


def test_in_memory_sources_serve_their_planted_labels_and_probe_set():
    clip = build_image_text_data(_fmnist_like(), seed=0, mismatch_share=0.3,
                                 duplicate_share=0.2)
    check_train_data(clip)
    assert isinstance(clip, TrainData) and clip.batch_mode == "memory"
    assert clip.num_samples == len(clip) == 20
    planted = clip.planted()
    assert planted.any and planted.mismatched.dtype == bool
    np.testing.assert_array_equal(planted.mismatched, clip.mismatched.numpy())
    np.testing.assert_array_equal(planted.duplicate_of, clip.duplicate_of.numpy())
    assert planted.mismatched.sum() > 0
    images, labels = clip.probe_set()
    assert images is clip.images and labels is clip.labels
    assert clip.epoch_stats(None) == {} and clip.skipped_samples() == {}
    assert clip.disk_corpus() is None

    dup = np.full(20, -1, dtype=np.int64)
    dup[3] = 1
    moco = ImageData(_fmnist_like().train_images, np.arange(20) % 10, dup, moco_views(0.2))
    check_train_data(moco)
    assert moco.batch_mode == "memory" and moco.num_samples == 20
    assert moco.planted().mismatched is None
    np.testing.assert_array_equal(moco.planted().duplicate_of, dup)
    assert moco.probe_set()[0] is moco.images


@needs_data
def test_csv_corpus_and_its_moco_crops_report_skips_repeats_and_their_files(csv_corpus):
    check_train_data(csv_corpus)
    assert csv_corpus.batch_mode == "corpus" and csv_corpus.num_samples == len(csv_corpus)
    assert csv_corpus.planted() == Planted() and not csv_corpus.planted().any
    assert csv_corpus.probe_set() is None and csv_corpus.disk_corpus() is csv_corpus
    csv_corpus.batch(list(range(12)), augment=False, fill_bad=True)  # row 7 fails to decode
    assert csv_corpus.epoch_stats(None) == {"skipped_samples": 3}     # CLIP's row: no repeats
    assert sorted(csv_corpus.skipped_samples()) == [2, 4, 7]
    assert csv_corpus.listing == csv_corpus.paths and csv_corpus.class_names is None

    crops = CorpusCrops(csv_corpus, moco_views(0.2))
    check_train_data(crops)
    assert crops.batch_mode == "corpus" and crops.num_samples == len(csv_corpus)
    assert crops.disk_corpus() is csv_corpus
    # repeats per epoch (a resumed run's rows equal an uninterrupted run's): only the refills
    # since the crops were built, then since the previous epoch's row
    before = csv_corpus.repeats
    assert before > 0 and crops.epoch_stats(None) == {"skipped_samples": 3,
                                                      "repeated_samples": 0}
    csv_corpus.batch(list(range(12)), augment=False, fill_bad=True)  # 3 bad slots refilled
    assert csv_corpus.repeats == before + 3
    assert crops.epoch_stats(None) == {"skipped_samples": 3, "repeated_samples": 3}
    assert crops.epoch_stats(None)["repeated_samples"] == 0
    assert crops.skipped_samples() == csv_corpus.skipped_samples()


@needs_data
@pytest.mark.parametrize("captions", [True, False])
def test_shard_stream_counts_bad_samples_for_its_use_and_the_epochs_repeats(shard_dir,
                                                                            captions):
    index = ShardIndex.open(shard_dir)
    stream = ShardStream(index, tokenizer=TOKENIZE if captions else None, spec=ImageSpec.cpu(),
                         world_size=2, captions=captions)
    check_train_data(stream)
    assert stream.batch_mode == "stream" and stream.num_samples == len(index)
    assert not stream.planted().any and stream.probe_set() is None
    assert stream.disk_corpus() is None
    stream.stats.corrupt[5] = "cannot identify image file"
    plan = plan_dropping(len(index), [0, 1, 2])
    stats = stream.epoch_stats(plan)
    at_index = index.skipped_for(captions)
    assert stats == {"skipped_samples": len(at_index) + 1,
                     "repeated_samples": stream.repeated_samples(plan)}
    # sample 9 has no .txt: bad for CLIP's image-text use only
    assert (9 in stream.skipped_samples()) is captions
    assert stream.skipped_samples()[5] == ("k005", "cannot identify image file")


def test_an_object_that_is_not_train_data_is_refused_by_name():
    class Bare:
        batch_mode = "memory"

        def __len__(self):
            return 3

    with pytest.raises(TypeError, match=r"Bare does not implement TrainData .*missing "
                                        r"\['num_samples', 'epoch_stats'"):
        check_train_data(Bare())

    class Odd(Bare):
        num_samples = 3

        def epoch_stats(self, plan): return {}
        def skipped_samples(self): return {}
        def planted(self): return Planted()
        def probe_set(self): return None
        def disk_corpus(self): return None

    Odd.batch_mode = "disk"
    with pytest.raises(TypeError, match=r"batch_mode is 'disk'; expected one of "
                                        r"\('memory', 'corpus', 'stream'\)"):
        check_train_data(Odd())


def test_the_numpy_arrays_the_jax_trainers_train_on_are_train_data():
    """The JAX trainers ask the same protocol (jax/clip.py, jax/moco.py): checked here on the
    framework-free classes, without importing JAX."""
    from reference_trainers.common.pairs import build_image_text_arrays

    arrays = build_image_text_arrays(_fmnist_like(), seed=0, mismatch_share=0.3)
    check_train_data(arrays)
    assert arrays.batch_mode == "memory" and arrays.num_samples == 20
    assert arrays.planted().mismatched is arrays.mismatched and arrays.mismatched.sum() > 0
    assert arrays.planted().duplicate_of is arrays.duplicate_of
    assert arrays.probe_set()[1] is arrays.labels and arrays.epoch_stats(None) == {}


def test_the_docs_snippet_of_the_protocol_runs():
    import re

    text = (ROOT / "docs" / "corpora.md").read_text()
    section = text[text.index("## 10. What a trainer asks of its data"):]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    exec(compile(block, "docs/corpora.md", "exec"), {})
