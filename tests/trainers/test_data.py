"""Fashion-MNIST reading, subsets, planted near-duplicates, and the torch batching of
reference_trainers/common: real files when installed, IDX files written here otherwise."""

from __future__ import annotations

import doctest
import gzip
import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from reference_trainers.common import data as data_module
from reference_trainers.common.data import (CLASS_NAMES, DEFAULT_FASHION_MNIST_DIR,
                                            FASHION_MNIST_MEAN, FASHION_MNIST_STD, ImageSplits,
                                            load_fashion_mnist, plant_near_duplicates, read_idx,
                                            shift_images, subset, subset_indices, write_idx)
from reference_trainers.common.errors import DataError, TrainerError

HAVE_FASHION_MNIST = pathlib.Path(DEFAULT_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file()
needs_real_data = pytest.mark.skipif(
    not HAVE_FASHION_MNIST,
    reason=f"Fashion-MNIST is not installed in {DEFAULT_FASHION_MNIST_DIR} "
           "(apt-get install -y dataset-fashion-mnist)")
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")


@pytest.fixture(scope="module")
def real_splits() -> ImageSplits:
    return load_fashion_mnist()


def small_splits(n_train=40, n_test=20, seed=0) -> ImageSplits:
    rng = np.random.default_rng(seed)
    return ImageSplits(
        train_images=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        train_labels=np.arange(n_train, dtype=np.int64) % 10,
        test_images=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        test_labels=np.arange(n_test, dtype=np.int64) % 10)


def write_split_dir(directory: pathlib.Path, splits: ImageSplits, gz=(True, False, True, False)):
    directory.mkdir(parents=True, exist_ok=True)
    arrays = (splits.train_images, splits.train_labels.astype(np.uint8), splits.test_images,
              splits.test_labels.astype(np.uint8))
    for stem, array, zipped in zip(STEMS, arrays, gz):
        write_idx(directory / (stem + (".gz" if zipped else "")), array)
    return directory


# -- the real, installed files -----------------------------------------------------------------

@needs_real_data
def test_installed_fashion_mnist_has_the_documented_shapes_dtypes_and_balance(real_splits):
    s = real_splits
    assert s.train_images.shape == (60000, 28, 28) and s.train_images.dtype == np.uint8
    assert s.test_images.shape == (10000, 28, 28) and s.test_images.dtype == np.uint8
    assert s.train_labels.dtype == np.int64 and s.test_labels.dtype == np.int64
    assert np.bincount(s.train_labels).tolist() == [6000] * 10
    assert np.bincount(s.test_labels).tolist() == [1000] * 10
    assert len(CLASS_NAMES) == 10


@needs_real_data
def test_normalisation_constants_are_the_training_pixel_statistics(real_splits):
    pixels = real_splits.train_images.astype(np.float64) / 255
    assert pixels.mean() == pytest.approx(FASHION_MNIST_MEAN, abs=1e-6)
    assert pixels.std() == pytest.approx(FASHION_MNIST_STD, abs=1e-6)


# -- IDX files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip_plain_and_gz(tmp_path, suffix, dtype):
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    path = tmp_path / f"x-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative and back.flags.writeable
    np.testing.assert_array_equal(back, array)
    assert (gzip.decompress(path.read_bytes()) if suffix else path.read_bytes())[:3] != b"\x1f\x8b"


@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6)))
def test_idx_round_trip_any_uint8_shape(tmp_path_factory, array):
    path = tmp_path_factory.mktemp("idx") / "a.gz"
    write_idx(path, array)
    np.testing.assert_array_equal(read_idx(path), array)


def test_idx_write_rejects_an_unknown_dtype(tmp_path):
    with pytest.raises(DataError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))


@pytest.mark.parametrize("cut", [2, 10, 40])
def test_truncated_idx_file_raises_naming_the_file(tmp_path, cut):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((2, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_raises_naming_the_file(tmp_path):
    path = tmp_path / "labels.gz"
    write_idx(path, np.arange(1000, dtype=np.uint8) % 10)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_trailing_bytes_raise(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.zeros(5, np.uint8))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="longer than its header"):
        read_idx(path)


@pytest.mark.parametrize("magic", [b"\x12\x34\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00"])
def test_wrong_magic_number_raises_naming_the_file_and_value(tmp_path, magic):
    path = tmp_path / "not-idx"
    path.write_bytes(magic + b"\x00\x00\x00\x01" + b"\x05")
    with pytest.raises(DataError, match="magic number 0x" + magic.hex()) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, TrainerError) and isinstance(info.value, ValueError)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read") as info:
        read_idx(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value)


# -- loading a directory -----------------------------------------------------------------------

def test_missing_directory_says_how_to_install(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist") as info:
        load_fashion_mnist(missing)
    assert str(missing) in str(info.value) and "--data-dir" in str(info.value)


def test_directory_missing_one_file_names_it(tmp_path):
    directory = write_split_dir(tmp_path / "d", small_splits())
    (directory / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as info:
        load_fashion_mnist(directory)
    assert str(directory) in str(info.value)


def test_custom_directory_with_mixed_plain_and_gz_files_loads(tmp_path):
    splits = small_splits()
    loaded = load_fashion_mnist(write_split_dir(tmp_path / "d", splits))
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(splits, field))
    assert loaded.train_labels.dtype == np.int64


def test_labels_out_of_range_or_mismatched_length_raise(tmp_path):
    splits = small_splits()
    directory = write_split_dir(tmp_path / "d", splits)
    write_idx(directory / "train-labels-idx1-ubyte", np.full(40, 12, np.uint8))
    with pytest.raises(DataError, match=r"span \[12, 12\]"):
        load_fashion_mnist(directory)
    write_idx(directory / "train-labels-idx1-ubyte", np.zeros(39, np.uint8))
    with pytest.raises(DataError, match=r"shape \(39,\)"):
        load_fashion_mnist(directory)


# -- subsets -----------------------------------------------------------------------------------

def test_balanced_subset_is_deterministic_sorted_and_class_balanced():
    labels = np.random.default_rng(3).integers(0, 10, 5000)
    ids = subset_indices(labels, 1003, seed=7)
    assert ids.dtype == np.int64 and len(np.unique(ids)) == 1003 and np.all(np.diff(ids) > 0)
    counts = np.bincount(labels[ids], minlength=10)
    assert counts.min() == 100 and counts.max() == 101
    np.testing.assert_array_equal(ids, subset_indices(labels, 1003, seed=7))
    assert not np.array_equal(ids, subset_indices(labels, 1003, seed=8))


def test_balanced_subset_fills_from_other_classes_when_one_runs_short():
    labels = np.array([0] * 3 + [1] * 50 + [2] * 50)
    counts = np.bincount(labels[subset_indices(labels, 60, seed=0)])
    assert counts.tolist()[0] == 3 and sum(counts) == 60 and abs(counts[1] - counts[2]) <= 1


def test_random_subset_and_invalid_sizes():
    labels = np.arange(100) % 10
    ids = subset_indices(labels, 30, seed=1, balanced=False)
    assert len(np.unique(ids)) == 30
    for bad in (0, 101, 2.5):
        with pytest.raises(DataError, match=f"num_samples={bad!r}"):
            subset_indices(labels, bad, seed=0)


def test_subset_cuts_the_training_split_only():
    splits = small_splits()
    cut = subset(splits, 20, seed=0)
    assert cut.train_images.shape == (20, 28, 28)
    assert np.bincount(cut.train_labels).tolist() == [2] * 10
    assert cut.test_images is splits.test_images


# -- planted near-duplicates -------------------------------------------------------------------

def test_shift_images_moves_a_pixel_by_one_with_zero_fill():
    image = np.zeros((1, 5, 5), np.uint8)
    image[0, 2, 2] = 9
    out = shift_images(np.repeat(image, 2, 0), np.array([1, -1]), np.array([0, 1]))
    assert out[0, 3, 2] == 9 and out[1, 1, 3] == 9 and out.sum() == 18


@pytest.mark.parametrize("share", [0.0, 0.1, 0.3])
def test_near_duplicates_are_same_class_recorded_and_close_to_a_shifted_source(share):
    splits = small_splits(n_train=200, seed=4)
    images, labels, duplicate_of = plant_near_duplicates(
        splits.train_images, splits.train_labels, share, seed=5, noise_level=8)
    dups = np.flatnonzero(duplicate_of >= 0)
    assert duplicate_of.dtype == np.int64 and len(dups) == round(share * 20) * 10
    assert np.all(labels[dups] == labels[duplicate_of[dups]])
    assert np.all(duplicate_of[duplicate_of[dups]] == -1)      # sources are originals
    originals = duplicate_of < 0
    np.testing.assert_array_equal(images[originals], splits.train_images[originals])
    source = splits.train_images[duplicate_of[dups]].astype(np.int16)
    errors = [np.abs(images[dups].astype(np.int16)
                     - shift_images(source, np.full(len(dups), dy), np.full(len(dups), dx)))
              .max(axis=(1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    assert np.all(np.min(errors, axis=0) <= 8)
    again = plant_near_duplicates(splits.train_images, splits.train_labels, share, seed=5)
    np.testing.assert_array_equal(again[0], images)
    np.testing.assert_array_equal(again[2], duplicate_of)


def test_duplicate_share_out_of_range_raises():
    splits = small_splits()
    for bad in (-0.1, 1.0):
        with pytest.raises(DataError, match=f"share={bad!r}"):
            plant_near_duplicates(splits.train_images, splits.train_labels, bad, seed=0)
    with pytest.raises(DataError, match="no original"):
        plant_near_duplicates(splits.train_images, splits.train_labels, 0.9, seed=0)


# -- torch: ImageTextData ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_data():
    pytest.importorskip("torch")
    from reference_trainers.common import torch_data
    return torch_data


@pytest.fixture(scope="module")
def small_data(torch_data):
    return torch_data.build_image_text_data(small_splits(n_train=60), seed=3, context_length=20)


def test_batch_without_augmentation_equals_stacked_getitem(torch_data, small_data):
    import torch
    ids = np.array([5, 0, 59, 5, 17])
    images, tokens, out_ids = small_data.batch(ids, augment=False, generator=None)
    items = [small_data[i] for i in ids]
    assert images.dtype == torch.float32 and images.shape == (5, 1, 28, 28)
    assert tokens.dtype == torch.int64 and tokens.shape == (5, 20)
    assert out_ids.dtype == torch.int64 and out_ids.tolist() == ids.tolist()
    torch.testing.assert_close(images, torch.stack([item[0] for item in items]), rtol=0, atol=0)
    torch.testing.assert_close(tokens, torch.stack([item[1] for item in items]), rtol=0, atol=0)
    assert [item[2] for item in items] == ids.tolist()


def test_augmentation_is_reproducible_and_matches_a_per_sample_reference(torch_data, small_data):
    import torch
    ids = torch.arange(32) % len(small_data)
    first = small_data.batch(ids, augment=True, generator=torch.Generator().manual_seed(11))[0]
    second = small_data.batch(ids, augment=True, generator=torch.Generator().manual_seed(11))[0]
    other = small_data.batch(ids, augment=True, generator=torch.Generator().manual_seed(12))[0]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, other)
    draws = torch.Generator().manual_seed(11)
    offsets = torch.randint(0, 5, (32, 2), generator=draws)
    flips = torch.rand(32, generator=draws) < 0.5
    padded = torch.nn.functional.pad(small_data.images[ids], (2, 2, 2, 2))
    for b in range(32):
        dy, dx = offsets[b].tolist()
        crop = padded[b, :, dy:dy + 28, dx:dx + 28]
        crop = crop.flip(-1) if flips[b] else crop
        torch.testing.assert_close(first[b], torch_data.normalise(crop), rtol=0, atol=0)


def test_batch_rejects_bad_ids(small_data):
    with pytest.raises(DataError, match=r"ids span \[0, 60\]"):
        small_data.batch(np.array([0, 60]), augment=False, generator=None)
    with pytest.raises(DataError, match="1-D integer"):
        small_data.batch(np.array([0.5]), augment=False, generator=None)


def test_dataset_view_works_with_a_dataloader(small_data):
    import torch
    loader = torch.utils.data.DataLoader(small_data, batch_size=8, shuffle=False)
    images, tokens, ids = next(iter(loader))
    assert images.shape == (8, 1, 28, 28) and tokens.shape == (8, 20)
    assert ids.tolist() == list(range(8))
    assert len(small_data) == 60


def test_build_records_planted_noise_and_subset_ids(torch_data):
    import torch
    splits = small_splits(n_train=400, seed=9)
    data = torch_data.build_image_text_data(splits, num_samples=200, mismatch_share=0.3,
                                            duplicate_share=0.2, seed=1)
    assert len(data) == 200 and np.bincount(data.labels.numpy()).tolist() == [20] * 10
    np.testing.assert_array_equal(splits.train_labels[data.source_ids.numpy()], data.labels.numpy())
    assert torch.equal(data.mismatched, data.caption_labels != data.labels)
    assert 0 < int(data.mismatched.sum()) < 200
    dups = data.duplicate_of >= 0
    assert int(dups.sum()) == 40
    assert torch.equal(data.labels[dups], data.labels[data.duplicate_of[dups]])
    assert len(data.texts) == 200


def test_build_refuses_noise_in_the_test_split(torch_data):
    with pytest.raises(DataError, match="training split only"):
        torch_data.build_image_text_data(small_splits(), train=False, mismatch_share=0.1)


@needs_real_data
def test_normalised_training_batch_has_mean_zero_std_one(torch_data, real_splits):
    data = torch_data.build_image_text_data(real_splits, num_samples=5000, seed=0)
    images = data.batch(np.arange(5000), augment=False, generator=None)[0]
    assert abs(float(images.mean())) < 0.02 and abs(float(images.std()) - 1) < 0.02


def test_docstring_examples_run(torch_data):
    for module in (data_module, torch_data):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
