"""Learning-rate schedules driven by progress in fractional epochs.

Pruned epochs are shorter. The released SCAN code's CLIP trainer indexed its cosine schedule by
step, so shrunken epochs made the index run backwards and the cosine never finished. Here the
schedule is a function of progress = epoch + (batch index + 1) / batches this epoch, which
reaches exactly `epochs` at the last step whatever each epoch's length (MoCo v3's approach).
"""

from __future__ import annotations

import math


def progress(epoch: int, batch_index: int, num_batches: int) -> float:
    """Fractional epochs done after batch `batch_index` (0-based) of `num_batches`."""
    if num_batches <= 0:
        return float(epoch + 1)
    return epoch + (batch_index + 1) / num_batches


def cosine_lr(base_lr: float, done: float, total: float, warmup: float = 0.0,
              min_lr: float = 0.0) -> float:
    """Linear warm-up over `warmup` epochs, then cosine from base_lr to min_lr at `total`."""
    if warmup > 0 and done < warmup:
        return base_lr * done / warmup
    span = max(total - warmup, 1e-12)
    t = min(max((done - warmup) / span, 0.0), 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))
