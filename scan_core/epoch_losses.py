"""Per-epoch loss buffers (dense per-sample, per-view sums) and global-scope selection over them:
what scope="global", loss history and InfoBatch need beyond bitmaps.

scope="batch" keeps none of this (SPEC.md: per batch, at once). The others accumulate every
recorded per-view loss into a dense (num_views, N) float32 sum and an (N,) count, reduced
across ranks by sum, so a sample recorded twice (DistributedSampler padding) counts once as
the mean of its records.
"""

from __future__ import annotations

import numpy as np

from scan_core import bitset
from scan_core.comm import Communicator
from scan_core.config import ScanConfig
from scan_core.select import SALT_HIGH, SALT_LOW, k_of, select_batch, stream_key


class EpochLosses:
    def __init__(self, num_views: int, num_samples: int) -> None:
        self.sum = np.zeros((num_views, num_samples), np.float32)
        self.count = np.zeros(num_samples, np.int32)

    def add(self, ids: np.ndarray, losses: np.ndarray, *, normalize: bool) -> None:
        if normalize and losses.shape[1] > 1:
            # Per-batch z-score per view: makes losses of different batches comparable.
            mean = losses.mean(axis=1, keepdims=True)
            std = losses.std(axis=1, keepdims=True)
            losses = (losses - mean) / (std + 1e-8)
        np.add.at(self.sum, (slice(None), ids), losses.astype(np.float32))
        np.add.at(self.count, ids, 1)

    def all_reduced(self, comm: Communicator) -> "EpochLosses":
        """A new buffer holding the sums over all ranks (this one is left as it was)."""
        out = EpochLosses.__new__(EpochLosses)
        out.sum = comm.all_reduce(self.sum, "sum")
        out.count = comm.all_reduce(self.count, "sum")
        return out

    def mean(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """(num_views, hi - lo) float32 mean loss per view of samples [lo, hi) (all by default);
        NaN where never recorded. A slice lets the store write history a chunk at a time."""
        total, count = self.sum[:, lo:hi], self.count[lo:hi]
        out = np.full(total.shape, np.nan, np.float32)
        seen = count > 0
        out[:, seen] = total[:, seen] / count[seen]
        return out

    def updated_scores(self, scores: np.ndarray) -> np.ndarray:
        """InfoBatch: a copy of `scores` where each seen sample's score is its latest
        mean-over-views loss."""
        out = scores.copy()
        seen = self.count > 0
        out[seen] = self.sum[:, seen].mean(axis=0) / self.count[seen]
        return out


def global_candidates(losses: EpochLosses, ema: np.ndarray | None, config: ScanConfig,
                      epoch: int, rho_low: float, rho_high: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """scope="global": rank each view over every sample seen this epoch (optionally an EMA over
    preparation epochs), then the same intersection and top-up as per batch.
    Returns (red_bits, ill_bits, new ema)."""
    values = losses.mean()
    if ema is not None:
        a = np.float32(config.global_ema)
        blended = np.where(np.isnan(ema), values, a * ema + (1 - a) * values)
        ema = np.where(np.isnan(values), ema, blended).astype(np.float32)
        values = ema
    ids = np.flatnonzero(~np.isnan(values).any(axis=0)).astype(np.int64)
    table = np.ascontiguousarray(values[:, ids])
    n = losses.count.shape[0]
    red, ill = bitset.new_bits(n), bitset.new_bits(n)
    select_batch(ids, table, k_of(rho_low, len(ids)), k_of(rho_high, len(ids)),
                 stream_key(config.seed, epoch, SALT_LOW), stream_key(config.seed, epoch, SALT_HIGH),
                 red, ill)
    return red, ill, ema
