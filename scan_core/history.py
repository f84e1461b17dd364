"""Per-sample features of the loss history across preparation epochs, read in chunks.

The store keeps each preparation epoch's per-view losses (`history/epoch_*/losses`, float16 or
float32, (num_views, N), NaN where unseen). Raw losses of different epochs are not comparable
(the model learns, every loss falls), so each (epoch, view) is first z-scored over the samples
seen in it; a sample's z of an epoch is the mean of its views' z (NaN when a view is unseen).
From the z of the epochs read, oldest first, each sample gets:

- `last`: z of the newest epoch (what one preparation epoch sees, ranked globally);
- `persist`: the minimum z over the newest `window` epochs: high only when the sample was
  high in every one of them (a wrong caption stays at the top; a hard correct pair falls);
- `delta`: z(newest) - z(the one before): negative when the sample is being learned;
- `mean`: the mean z over every epoch where it was seen.

Why chunks: N can be 1e9. Two passes read `chunk_samples` columns at a time: the first sums
each (epoch, view)'s count, sum and sum of squares (float64), the second turns each chunk into
the features with a Numba kernel (`_chunk_features`, twin `features_numpy`). RAM: the chunk
(epochs x views x chunk_samples x 4 bytes) plus the four (N,) float32 outputs, never the whole
history. Why the store chunks history along samples: see `HISTORY_CHUNK_SAMPLES` in store.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np

from scan_core.errors import ScanInputError

FEATURES = ("last", "persist", "delta", "mean")
DEFAULT_CHUNK_SAMPLES = 1 << 20


@numba.njit(cache=True, nogil=True)
def _chunk_moments(losses, out):
    """Adds each (epoch, view)'s count, sum and sum of squares of finite values to out."""
    num_epochs, num_views, num_cols = losses.shape
    for e in range(num_epochs):
        for v in range(num_views):
            n = 0.0
            s = 0.0
            q = 0.0
            for j in range(num_cols):
                x = np.float64(losses[e, v, j])
                if np.isfinite(x):
                    n += 1.0
                    s += x
                    q += x * x
            out[e, v, 0] += n
            out[e, v, 1] += s
            out[e, v, 2] += q


@numba.njit(cache=True, nogil=True)
def _chunk_features(losses, mean, inv_std, window, last, persist, delta, avg):
    """The four features of one chunk of samples (see the module docstring)."""
    num_epochs, num_views, num_cols = losses.shape
    z = np.empty(num_epochs, np.float64)
    for j in range(num_cols):
        for e in range(num_epochs):
            acc = 0.0
            for v in range(num_views):
                x = np.float64(losses[e, v, j])
                if not np.isfinite(x):
                    acc = np.nan
                    break
                acc += (x - mean[e, v]) * inv_std[e, v]
            z[e] = acc / num_views
        last[j] = z[num_epochs - 1]
        lo = np.inf
        for e in range(max(0, num_epochs - window), num_epochs):
            if np.isnan(z[e]):
                lo = np.nan
                break
            lo = min(lo, z[e])
        persist[j] = lo
        delta[j] = z[num_epochs - 1] - z[num_epochs - 2] if num_epochs > 1 else np.nan
        total = 0.0
        seen = 0
        for e in range(num_epochs):
            if not np.isnan(z[e]):
                total += z[e]
                seen += 1
        avg[j] = total / seen if seen else np.nan


def _standardise(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count = np.maximum(moments[..., 0], 1.0)
    mean = moments[..., 1] / count
    var = np.maximum(moments[..., 2] / count - mean * mean, 0.0)
    return mean, 1.0 / (np.sqrt(var) + 1e-8)


def features_numpy(losses: np.ndarray, window: int = 2) -> dict[str, np.ndarray]:
    """Plain numpy twin of the chunked kernels over a whole (epochs, views, N) history."""
    x = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(x)
    count = np.maximum(finite.sum(axis=2), 1)
    mean = np.where(finite, x, 0.0).sum(axis=2) / count
    var = np.maximum((np.where(finite, x, 0.0) ** 2).sum(axis=2) / count - mean**2, 0.0)
    z = ((x - mean[..., None]) / (np.sqrt(var)[..., None] + 1e-8)).mean(axis=1)  # NaN stays
    out = {"last": z[-1], "persist": z[-window:].min(axis=0),
           "delta": z[-1] - z[-2] if len(z) > 1 else np.full(z.shape[1], np.nan),
           "mean": _nanmean_quiet(z)}
    return {k: v.astype(np.float32) for k, v in out.items()}


def _nanmean_quiet(z: np.ndarray) -> np.ndarray:
    seen = np.isfinite(z)
    total = np.where(seen, z, 0.0).sum(axis=0)
    num = seen.sum(axis=0)
    return np.where(num > 0, total / np.maximum(num, 1), np.nan)


def _check(window: int, chunk_samples: int, num_epochs: int) -> None:
    if num_epochs < 1:
        raise ScanInputError("the loss history holds no preparation epoch; run with "
                             "loss_history='float16' and read after a preparation epoch ended.")
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ScanInputError(f"window must be an int >= 1 (preparation epochs), got {window!r}.")
    if not isinstance(chunk_samples, (int, np.integer)) or chunk_samples < 1:
        raise ScanInputError(f"chunk_samples must be an int >= 1, got {chunk_samples!r}.")


def history_features(arrays: Sequence[Any], window: int = 2,
                     chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
                     names: Sequence[str] = FEATURES) -> dict[str, np.ndarray]:
    """Features `names` of the histories `arrays` (oldest first; each (num_views, N), a zarr
    array or anything sliceable as [:, lo:hi]), read `chunk_samples` samples at a time.
    RAM: 4 bytes per sample per name asked for, plus the chunk."""
    _check(window, chunk_samples, len(arrays))
    unknown = [n for n in names if n not in FEATURES]
    if unknown or not names:
        raise ScanInputError(f"names must be a non-empty subset of {FEATURES}, got "
                             f"{list(names)!r}.")
    num_views, num_samples = arrays[0].shape
    for arr in arrays:
        if tuple(arr.shape) != (num_views, num_samples):
            raise ScanInputError(f"every history epoch must be ({num_views}, {num_samples}); "
                                 f"got {tuple(arr.shape)}. Read histories of one run only.")
    moments = np.zeros((len(arrays), num_views, 3), np.float64)
    for lo in range(0, num_samples, chunk_samples):
        _chunk_moments(_read(arrays, lo, min(num_samples, lo + chunk_samples)), moments)
    mean, inv_std = _standardise(moments)
    out = {name: np.empty(num_samples, np.float32) for name in names}
    for lo in range(0, num_samples, chunk_samples):
        hi = min(num_samples, lo + chunk_samples)
        part = {name: np.empty(hi - lo, np.float32) for name in FEATURES}
        _chunk_features(_read(arrays, lo, hi), mean, inv_std, int(window), *part.values())
        for name in names:
            out[name][lo:hi] = part[name]
    return out


def _read(arrays: Sequence[Any], lo: int, hi: int) -> np.ndarray:
    return np.stack([np.asarray(arr[:, lo:hi], dtype=np.float32) for arr in arrays])


def store_features(store: Any, epochs: Sequence[int] | None = None, window: int = 2,
                   chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
                   names: Sequence[str] = FEATURES) -> dict[str, np.ndarray]:
    """`history_features` over a LossStore's history epochs (all complete ones by default)."""
    epochs = list(store.history_epochs() if epochs is None else epochs)
    missing = sorted(set(epochs) - set(store.history_epochs()))
    if missing:
        raise ScanInputError(f"history epochs {missing} are not in the store (it holds "
                             f"{store.history_epochs()}); pass epochs it holds.")
    return history_features([store.history_array(e) for e in epochs], window, chunk_samples,
                            names)


def persistent_ill(raw: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ill_persistence: (ill-matched candidates, the new rows of previous raw ends). A sample
    counts when it is in this preparation's raw end and in each of the len(prev) previous ones
    (rows start all zero, so none counts before that many preparations). New arrays only:
    end_epoch's rollback relies on nothing being changed in place."""
    ill = raw.copy()
    for row in prev:
        ill &= row
    return ill, np.concatenate([raw[None, :], prev[:-1]])


def epoch_z(losses: np.ndarray) -> np.ndarray:
    """(N,) float64: each view's losses z-scored over the samples seen in it, averaged over the
    views; NaN where a view is unseen (one epoch's `last` feature, from a (views, N) array)."""
    x = np.asarray(losses, np.float64)
    finite = np.isfinite(x)
    count = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    mean = np.where(finite, x, 0.0).sum(axis=1, keepdims=True) / count
    var = np.maximum((np.where(finite, x, 0.0) ** 2).sum(axis=1, keepdims=True) / count
                     - mean**2, 0.0)
    return ((x - mean) / (np.sqrt(var) + 1e-8)).mean(axis=0)


def retire_more(losses: np.ndarray, ill_bits: np.ndarray, retired: np.ndarray,
                cap: int) -> np.ndarray:
    """retire_share: a new retired bitmap: `retired` plus the ill-matched candidates with the
    highest epoch z (ties: the lower id), until `cap` samples are retired in all. Measured on
    one run (docs/results.md, Beyond SCAN): the top 5-10% of N by z are 89-96% wrong captions.
    """
    num_samples = losses.shape[1]
    room = cap - int(np.unpackbits(retired, count=num_samples, bitorder="little").sum())
    out = retired.copy()
    if room <= 0:
        return out
    eligible = np.unpackbits(ill_bits & ~retired, count=num_samples, bitorder="little")
    z = epoch_z(losses)
    ids = np.flatnonzero(eligible.astype(bool) & np.isfinite(z))
    chosen = ids[np.lexsort((ids, -z[ids]))][:room]
    mask = np.zeros(num_samples, bool)
    mask[chosen] = True
    return out | np.packbits(mask, bitorder="little")
