"""retire_share's step, in chunks: RAM bounded by the chunk, not by N.

At each preparation epoch the rule (c) of issue 20 retires, for the rest of the run, the
ill-matched candidates with the highest epoch z (each view's mean loss z-scored over the
samples seen in it, averaged over the views; ties: the lower id) until `cap` samples are
retired in all. `history.retire_more` is the whole-array twin: it holds (views, N) float64
temporaries and an (N,) bool mask, about 40 bytes per sample at two views (40 GB at
N = 1e9). This one reads the epoch's mean losses `chunk_samples` columns at a time, in three
passes:

1. per view: count, sum and sum of squares of the finite means, their minimum and maximum
   (so the z-scores and the range of z are known before any z is computed);
2. a histogram of the eligible candidates' z (`HISTOGRAM_BINS` equal bins over that range),
   from which the bin that holds the `room`-th highest z follows;
3. every eligible candidate in a higher bin is retired; those in that bin are kept aside
   with their z and ordered as the twin orders them (-z, then id) to fill what is left.

RAM beyond the loss buffer the pruner holds anyway: the chunk (views x chunk x 8 bytes, a
few times), the histogram (512 KiB), the boundary bin's candidates and the N/8-byte bitmaps.
The moments are summed chunk by chunk, so z can differ from the twin's in the last bits; the
retired set is the same unless two candidates' z are that close (tests/core/test_retire.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from scan_core import bitset

DEFAULT_CHUNK_SAMPLES = 1 << 18  # a multiple of 8: chunks start on a bitmap byte; ~20 MiB
HISTOGRAM_BINS = 1 << 16

EpochMean = Callable[[int, int], np.ndarray]  # (lo, hi) -> (views, hi - lo) float32, NaN unseen


def _view_stats(epoch_mean: EpochMean, num_samples: int, chunk: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per view: mean, 1 / (std + 1e-8) (as history.epoch_z computes them), min and max of
    the finite values (+inf / -inf where a view has none)."""
    moments = low = high = None
    for lo in range(0, num_samples, chunk):
        x = np.asarray(epoch_mean(lo, min(num_samples, lo + chunk)), np.float64)
        finite = np.isfinite(x)
        values = np.where(finite, x, 0.0)
        part = np.stack([finite.sum(axis=1), values.sum(axis=1), (values**2).sum(axis=1)], 1)
        part_low = np.where(finite, x, np.inf).min(axis=1)
        part_high = np.where(finite, x, -np.inf).max(axis=1)
        if moments is None:
            moments, low, high = part, part_low, part_high
        else:
            moments, low, high = (moments + part, np.minimum(low, part_low),
                                  np.maximum(high, part_high))
    count = np.maximum(moments[:, 0], 1.0)
    mean = moments[:, 1] / count
    var = np.maximum(moments[:, 2] / count - mean * mean, 0.0)
    return mean, 1.0 / (np.sqrt(var) + 1e-8), low, high


def retire_more_chunked(epoch_mean: EpochMean, num_samples: int, ill_bits: np.ndarray,
                        retired: np.ndarray, cap: int, *,
                        chunk_samples: int = DEFAULT_CHUNK_SAMPLES) -> np.ndarray:
    """A new retired bitmap: `retired` plus the ill-matched candidates (`ill_bits`) with the
    highest epoch z, until `cap` samples are retired in all (see the module docstring).
    epoch_mean(lo, hi): the epoch's (views, hi - lo) mean losses, NaN where unseen (for
    example `EpochLosses.mean`)."""
    chunk = max(8, chunk_samples - chunk_samples % 8)
    room = cap - bitset.popcount(retired)
    out = retired.copy()
    if room <= 0 or num_samples == 0:
        return out
    eligible_bits = ill_bits & ~retired
    mean, inv_std, low, high = _view_stats(epoch_mean, num_samples, chunk)
    z_low = float(((low - mean) * inv_std).mean())
    z_high = float(((high - mean) * inv_std).mean())
    if not (np.isfinite(z_low) and np.isfinite(z_high)):
        return out                         # a view was never seen: no sample has a finite z
    width = (z_high - z_low) / HISTOGRAM_BINS or 1.0

    def chunks() -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
        for lo in range(0, num_samples, chunk):
            hi = min(num_samples, lo + chunk)
            x = np.asarray(epoch_mean(lo, hi), np.float64)
            z = ((x - mean[:, None]) * inv_std[:, None]).mean(axis=0)
            eligible = np.unpackbits(eligible_bits[lo // 8:(hi + 7) // 8], count=hi - lo,
                                     bitorder="little").astype(bool) & np.isfinite(z)
            local = np.flatnonzero(eligible)
            z = z[local]
            bins = np.clip(((z - z_low) / width).astype(np.int64), 0, HISTOGRAM_BINS - 1)
            yield lo, hi, local, z, bins

    counts = np.zeros(HISTOGRAM_BINS, np.int64)
    for *_, bins in chunks():
        counts += np.bincount(bins, minlength=HISTOGRAM_BINS)
    from_top = np.cumsum(counts[::-1])
    boundary = -1 if from_top[-1] <= room else \
        HISTOGRAM_BINS - 1 - int(np.searchsorted(from_top, room))
    taken = 0
    edge_ids, edge_z = [], []
    for lo, hi, local, z, bins in chunks():
        above = np.zeros(hi - lo, bool)
        above[local[bins > boundary]] = True
        taken += int(above.sum())
        out[lo // 8:(hi + 7) // 8] |= np.packbits(above, bitorder="little")
        on_edge = bins == boundary
        edge_ids.append(lo + local[on_edge])
        edge_z.append(z[on_edge])
    need = room - taken
    if need > 0 and edge_ids:
        ids, z = np.concatenate(edge_ids), np.concatenate(edge_z)
        bitset.set_ids(out, ids[np.lexsort((ids, -z))][:need])
    return out


__all__ = ["DEFAULT_CHUNK_SAMPLES", "HISTOGRAM_BINS", "retire_more_chunked"]
