"""Fashion-MNIST from the standard IDX files, subsets, and planted near-duplicates (numpy only).

The reference trainers pre-train on real data a package ships: on Debian machines
`apt-get install -y dataset-fashion-mnist` puts the four IDX files (gzipped) in
`/usr/share/datasets/fashion-mnist`; any directory holding them (plain or .gz) works too.

Planted near-duplicates make SCAN's "redundant" end observable: `plant_near_duplicates` records
which sample copies which (`duplicate_of`), so an experiment can score the candidate set D'
(paper, Sec. 3: redundant = well-learned, low-loss samples).

>>> import numpy as np
>>> labels = np.repeat(np.arange(10), 6)
>>> ids = subset_indices(labels, 20, seed=0)
>>> np.bincount(labels[ids]).tolist()
[2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import zlib

import numpy as np

from reference_trainers.common.errors import DataError

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = ("install the data with `apt-get install -y dataset-fashion-mnist` (it fills "
                f"{DEFAULT_FASHION_MNIST_DIR}), or pass --data-dir with a directory holding the "
                "four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (plain or .gz)")

CLASS_NAMES: tuple[str, ...] = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal",
                                "shirt", "sneaker", "bag", "ankle boot")
NUM_CLASSES = len(CLASS_NAMES)

# Pixel statistics of the 60,000 training images on the [0, 1] scale (computed once, float64).
FASHION_MNIST_MEAN = 0.2860406
FASHION_MNIST_STD = 0.3530242

# IDX dtype codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); big-endian data.
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_SPLIT_FILES = {"train_images": "train-images-idx3-ubyte",
                "train_labels": "train-labels-idx1-ubyte",
                "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    """Both splits in memory.

    train_images: uint8 (N_train, 28, 28); train_labels: int64 (N_train,) in [0, 10);
    test_images: uint8 (N_test, 28, 28); test_labels: int64 (N_test,).
    Fashion-MNIST has N_train = 60,000 and N_test = 10,000.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


# ---------------------------------------------------------------- IDX files

def _read_bytes(path: pathlib.Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read IDX file {path}: {err}; {INSTALL_HINT}") from err
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"IDX file {path} is a corrupt or truncated gzip file ({err}); "
                        f"delete it and reinstall: {INSTALL_HINT}") from err


def _parse_header(data: bytes, path: pathlib.Path) -> tuple[np.dtype, tuple[int, ...], int]:
    if len(data) < 4:
        raise DataError(f"IDX file {path} holds {len(data)} bytes, fewer than its 4-byte magic "
                        "number; the file is truncated or not an IDX file")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"IDX file {path} has magic number 0x{data[:4].hex()}, expected "
                        "0x0000TTDD with dtype code TT in {08,09,0b,0c,0d,0e} and DD >= 1 "
                        "dimensions; it is not an IDX file (or not unpacked correctly)")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"IDX file {path} ends inside its header ({len(data)} bytes, header "
                        f"needs {offset}); the file is truncated")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return _IDX_DTYPES[code], dims, offset


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, plain or gzip-compressed (detected from its first bytes).

    Returns a writable native-endian array of the file's dtype and dimensions (uint8 for
    Fashion-MNIST). Raises DataError naming the file when it is missing, unreadable, a corrupt
    gzip stream, has a wrong magic number, or holds more or fewer bytes than its header says.
    """
    path = pathlib.Path(path)
    data = _read_bytes(path)
    dtype, dims, offset = _parse_header(data, path)
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - offset != expected:
        state = "truncated" if len(data) - offset < expected else "longer than its header says"
        raise DataError(f"IDX file {path} is {state}: header {dims} of {dtype.name} needs "
                        f"{expected} data bytes, the file holds {len(data) - offset}; "
                        f"reinstall it ({INSTALL_HINT})")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=offset)
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as an IDX file (gzip-compressed when `path` ends in .gz).

    The dtype must be one IDX knows (uint8, int8, int16, int32, float32, float64); `read_idx`
    returns an equal array. Useful to build a custom --data-dir and in tests.
    """
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise DataError(f"cannot write {array.dtype} array of shape {array.shape} to {path} as "
                        "IDX: use uint8, int8, int16, int32, float32 or float64 with 1-255 dims")
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(_IDX_DTYPES[code], copy=False).tobytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    pathlib.Path(path).write_bytes(payload)


# ---------------------------------------------------------------- Fashion-MNIST

def _find_file(directory: pathlib.Path, stem: str) -> pathlib.Path:
    # Some mirrors spell the stem with a dot before "idx" (train-images.idx3-ubyte).
    names = [stem, stem + ".gz"]
    names += [name.replace("-idx", ".idx") for name in names]
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory} has no {stem} file (looked for {', '.join(names)}); "
                    f"{INSTALL_HINT}")


def _check_split(images: np.ndarray, labels: np.ndarray, name: str, directory) -> None:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{name} images in {directory} are {images.dtype} {images.shape}, "
                        "expected uint8 (N, H, W)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{name} labels in {directory} have shape {labels.shape}, expected "
                        f"({len(images)},) to match the {name} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{name} labels in {directory} span [{labels.min()}, {labels.max()}], "
                        f"expected [0, {NUM_CLASSES - 1}] (the Fashion-MNIST classes)")


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> ImageSplits:
    """Load both splits from `data_dir` (default DEFAULT_FASHION_MNIST_DIR).

    Accepts the four IDX files gzipped or unpacked. Returns ImageSplits with uint8 images
    (N, 28, 28) and int64 labels. Raises DataError, with the install command, when the directory
    or a file is missing, unreadable or corrupt.
    """
    directory = pathlib.Path(DEFAULT_FASHION_MNIST_DIR if data_dir is None else data_dir)
    if not directory.is_dir():
        raise DataError(f"Fashion-MNIST directory {directory} does not exist or is not a "
                        f"directory; {INSTALL_HINT}")
    arrays = {key: read_idx(_find_file(directory, stem)) for key, stem in _SPLIT_FILES.items()}
    for split in ("train", "test"):
        _check_split(arrays[f"{split}_images"], arrays[f"{split}_labels"], split, directory)
    return ImageSplits(
        train_images=arrays["train_images"], train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"], test_labels=arrays["test_labels"].astype(np.int64))


# ---------------------------------------------------------------- subsets

def subset_indices(labels: np.ndarray, num_samples: int, seed: int, *,
                   balanced: bool = True) -> np.ndarray:
    """Sorted int64 ids of a deterministic subset of `num_samples` of `labels` (int, (N,)).

    balanced=True takes num_samples // C of every class present, then spreads the remainder over
    randomly chosen classes (a class short of samples gives all it has, the rest come from the
    others); balanced=False draws uniformly without replacement. Same (labels, num, seed) ->
    same ids.
    """
    labels = np.asarray(labels)
    if not 0 < num_samples <= len(labels) or int(num_samples) != num_samples:
        raise DataError(f"num_samples={num_samples!r} must be an integer in [1, {len(labels)}] "
                        "(the size of the split)")
    rng = np.random.default_rng(seed)
    if not balanced:
        ids = rng.choice(len(labels), size=int(num_samples), replace=False)
        return np.sort(ids).astype(np.int64)
    # A random rank within each class, then take ranks in round-robin order over classes.
    order = rng.permutation(len(labels))
    by_class = order[np.argsort(labels[order], kind="stable")]
    counts = np.bincount(labels[by_class])
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rank_in_class = np.arange(len(labels)) - starts
    class_tiebreak = rng.permutation(len(counts))[labels[by_class]]
    priority = rank_in_class * len(counts) + class_tiebreak
    chosen = by_class[np.argsort(priority, kind="stable")[:int(num_samples)]]
    return np.sort(chosen).astype(np.int64)


def subset(splits: ImageSplits, num_train: int, seed: int, *, balanced: bool = True) -> ImageSplits:
    """`splits` with the training split cut to `num_train` samples (see `subset_indices`);
    the test split is untouched."""
    ids = subset_indices(splits.train_labels, num_train, seed, balanced=balanced)
    return dataclasses.replace(splits, train_images=splits.train_images[ids],
                               train_labels=splits.train_labels[ids])


# ---------------------------------------------------------------- planted near-duplicates

def shift_images(images: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Shift each image of uint8 (N, H, W) by (dy[i], dx[i]) pixels in [-1, 1], zero fill.

    Vectorised: one gather from the 1-pixel zero-padded stack. Returns uint8 (N, H, W).
    """
    n, height, width = images.shape
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    rows = (1 - np.asarray(dy))[:, None] + np.arange(height)
    cols = (1 - np.asarray(dx))[:, None] + np.arange(width)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def plant_near_duplicates(images: np.ndarray, labels: np.ndarray, share: float, seed: int, *,
                          noise_level: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replace `share` of each class's images by a lightly perturbed copy of another image of
    the same class.

    images: uint8 (N, H, W); labels: int (N,). A duplicate is its source shifted by one pixel
    (one of the 8 neighbouring offsets, zero fill) plus integer noise uniform in
    [-noise_level, noise_level], clipped to [0, 255]. Sources are never duplicates themselves.
    Returns (images uint8 (N, H, W) a new array, labels int64 (N,), duplicate_of int64 (N,):
    the source's position for a duplicate, -1 elsewhere). Per class, round(share * n_class)
    images become duplicates. Deterministic in (inputs, share, seed).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != (len(images),):
        raise DataError(f"images {images.dtype} {images.shape} and labels {labels.shape}: "
                        "expected uint8 (N, H, W) and (N,) with the same N")
    if not 0 <= noise_level <= 255:
        raise DataError(f"noise_level={noise_level!r} must be in [0, 255] (pixel units)")
    if not 0.0 <= share < 1.0:
        raise DataError(f"duplicate share={share!r} must be in [0, 1): the share of training "
                        "images replaced by near-duplicates of another image of their class")
    rng = np.random.default_rng(seed)
    duplicate_of = np.full(len(labels), -1, dtype=np.int64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        k = int(round(share * len(members)))
        if k and k >= len(members):
            raise DataError(f"duplicate share={share} leaves class {cls} ({len(members)} images) "
                            "no original to copy; use a smaller share or more samples")
        duplicate_of[members[:k]] = rng.choice(members[k:], size=k, replace=True) if k else []
    dups = np.flatnonzero(duplicate_of >= 0)
    out = images.copy()
    offsets = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    dy, dx = offsets[rng.integers(0, len(offsets), size=len(dups))].T
    noise = rng.integers(-noise_level, noise_level + 1, size=(len(dups),) + images.shape[1:])
    shifted = shift_images(images[duplicate_of[dups]], dy, dx).astype(np.int16)
    out[dups] = np.clip(shifted + noise, 0, 255).astype(np.uint8)
    return out, labels, duplicate_of


def split_subset(splits: ImageSplits, *, train: bool, num_samples: int | None,
                 duplicate_share: float = 0.0, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One split as every trainer takes it: a class-balanced subset of `num_samples` (all when
    None, see `subset_indices`), then `duplicate_share` planted near-duplicates.

    Returns (source_ids int64 (n,) the samples' positions in the split, images uint8
    (n, H, W), labels int64 (n,), duplicate_of int64 (n,), -1 where none).
    """
    images, labels = ((splits.train_images, splits.train_labels) if train
                      else (splits.test_images, splits.test_labels))
    source_ids = (np.arange(len(labels), dtype=np.int64) if num_samples is None
                  else subset_indices(labels, num_samples, seed))
    images, labels, duplicate_of = plant_near_duplicates(
        images[source_ids], np.asarray(labels, dtype=np.int64)[source_ids], duplicate_share, seed)
    return source_ids, images, labels, duplicate_of
