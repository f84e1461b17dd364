"""Progress output: a bar while an epoch runs, one line when it ends.

The bar redraws in place on a terminal and prints a line every ~10% otherwise (logs, CI), so
long work always shows it is alive.
"""

from __future__ import annotations

import sys
import time
from typing import IO


class EpochBar:
    def __init__(self, epoch: int, total_batches: int, *, phase: str, kept_share: float,
                 stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.epoch, self.total, self.phase, self.kept_share = epoch, total_batches, phase, kept_share
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total_batches > 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_tenth = -1

    def update(self, done: int, loss: float) -> None:
        if not self.enabled:
            return
        frac = done / self.total
        elapsed = time.perf_counter() - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        text = (f"epoch {self.epoch:3d} {self.phase:<7} [{'#' * int(frac * 24):<24}] "
                f"{done}/{self.total} loss {loss:.4f} kept {self.kept_share:.0%} "
                f"{elapsed:.0f}s<{eta:.0f}s")
        if self.tty:
            self.stream.write("\r" + text)
            if done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif int(frac * 10) > self._last_tenth:
            self._last_tenth = int(frac * 10)
            self.stream.write(text + "\n")
            self.stream.flush()


def epoch_line(row: dict, *, accuracy: tuple[str, str] = ("zero_shot_top1", "zero-shot")) -> str:
    """One line per epoch: phase, rho_cur, kept share, loss, accuracy, seconds.

    accuracy: (metrics key, label) of the per-epoch accuracy shown (CLIP: zero-shot; MoCo: kNN).
    """
    key, label = accuracy
    acc = row.get(key)
    probe = row.get("linear_probe_top1")
    parts = [f"epoch {row['epoch']:3d}", f"{row['phase']:<7}", f"rho_cur {row['rho_cur']:.2f}",
             f"kept {row['kept_share']:6.1%}", f"|D'| {row['num_candidates']:>7,d}",
             f"loss {row['train_loss']:.4f}",
             f"{label} {acc:.4f}" if acc is not None else f"{label}   -   ",
             f"probe {probe:.4f}" if probe is not None else "",
             f"saved {row['realised_saving']:6.2%}", f"{row['seconds']:6.1f}s"]
    return "  ".join(p for p in parts if p)


def knn_epoch_line(row: dict) -> str:
    """The MoCo trainers' epoch line: kNN top-1 as the per-epoch accuracy."""
    return epoch_line(row, accuracy=("knn_top1", "kNN"))


# The closing line's name of each headline metric of a run's summary.
HEADLINE_LABELS = {"zero_shot_top1": "zero-shot top-1", "linear_probe_top1": "linear probe top-1",
                   "knn_top1": "kNN top-1"}


def closing_line(result: dict, headline: tuple[str, ...]) -> str:
    """The line a trainer prints when its run ends: the `headline` metrics of its summary (in
    that order, '-' when not measured), the pruned share of sample-visits and the seconds.

    >>> closing_line({"knn_top1": 0.5, "linear_probe_top1": None, "wall_seconds": 61.2,
    ...               "realised_pruned_share": 0.125}, ("linear_probe_top1", "knn_top1"))
    'linear probe top-1 -, kNN top-1 0.5000, pruned 12.5% of sample-visits, 61 s'
    """
    from reference_trainers.common.loop import fmt

    metrics = [f"{HEADLINE_LABELS[key]} {fmt(result[key])}" for key in headline]
    return ", ".join([*metrics, f"pruned {result['realised_pruned_share']:.1%} of sample-visits",
                      f"{fmt(result['wall_seconds'], '.0f')} s"])
