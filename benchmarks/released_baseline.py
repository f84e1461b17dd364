"""The bookkeeping of the authors' released SCAN code, reimplemented in plain Python.

This is the yardstick of `bench_bookkeeping.py`, not a library. It was written from a
description of the released open_clip / moco-v3 forks (shared/ANCHORS.md, issue 2 section 6);
no code was copied. It keeps the released code's data structures, because their cost is what
the benchmark measures:

- per batch of a preparation epoch and per view: a numpy argsort of the batch's losses; the
  floor(rho * B) lowest and highest positions mapped to sample keys, made Python lists and then
  Python sets. Keys are tuples, as the authors key CLIP samples by (webdataset key, caption
  tokens); here `(id, 0)`, which is cheaper than theirs, so memory figures are a lower bound.
- the two views' sets intersected; when the intersection holds fewer than 0.9 * k members it is
  topped up to k with `random.sample` from (union minus intersection);
- redundant and ill-matched sets added to one global Python set of candidates (D').
- a mutation epoch: `random.sample(list(D'), floor(rho_cur * |D'|))` (on Python 3.11+
  `random.sample` refuses a set, so the working path goes through a list), then the dataset's
  index map is rebuilt over all N ids, skipping the dropped ones: a list of kept ids and a
  dict id -> position.

The released code's k = 0 bug (select the whole batch) is not reproduced: the defaults never hit
it. The interface mirrors what the benchmark drives on `scan_core.ScanPruner`:

>>> import numpy as np
>>> book = ReleasedBookkeeping(num_samples=2048, seed=0)
>>> rng = np.random.default_rng(0)
>>> for start in range(0, 2048, 1024):
...     book.record(np.arange(start, start + 1024), rng.random((2, 1024), dtype=np.float32))
>>> book.end_preparation()
>>> kept, index = book.plan_mutation(0.25)
>>> len(kept) == 2048 - int(0.25 * book.num_candidates)
True
"""

from __future__ import annotations

import math
import random

import numpy as np

TOPUP_FRACTION = 0.9  # the authors' threshold for topping up a thin two-view intersection


class ReleasedBookkeeping:
    """Candidate sets and kept-index rebuilds the way the released SCAN code keeps them.

    Args:
      num_samples: N; ids 0..N-1.
      rho_low / rho_high: share of each batch taken at the low- / high-loss end (0.30: CLIP).
      seed: seeds the `random.Random` used for top-ups and mutation draws.
    """

    def __init__(self, num_samples: int, rho_low: float = 0.30, rho_high: float = 0.30,
                 seed: int = 0) -> None:
        self.num_samples = int(num_samples)
        self.rho_low = rho_low
        self.rho_high = rho_high
        self._rng = random.Random(seed)
        self._building: set[tuple[int, int]] = set()   # D' of the preparation epoch under way
        self.candidates: set[tuple[int, int]] = set()  # the last completed D'

    @property
    def num_candidates(self) -> int:
        return len(self.candidates)

    def record(self, ids: np.ndarray, losses: np.ndarray) -> None:
        """One batch of a preparation epoch: ids (B,), losses (num_views, B)."""
        batch = len(ids)
        k_low = math.floor(self.rho_low * batch + 1e-9)
        k_high = math.floor(self.rho_high * batch + 1e-9)
        lows, highs = [], []
        for view_losses in losses:
            order = np.argsort(view_losses)
            low_ids = ids[order[:k_low]].tolist()
            high_ids = ids[order[batch - k_high:]].tolist() if k_high else []
            lows.append(set([(i, 0) for i in low_ids]))
            highs.append(set([(i, 0) for i in high_ids]))
        self._building |= self._combine(lows, k_low)
        self._building |= self._combine(highs, k_high)

    def end_preparation(self) -> None:
        """Close a preparation epoch: its candidates replace the previous D'."""
        self.candidates = self._building
        self._building = set()

    def plan_mutation(self, rho_cur: float) -> tuple[list[int], dict[int, int]]:
        """Draw the dropped subset and rebuild the kept index: (kept ids, id -> position)."""
        num_drop = int(rho_cur * len(self.candidates))
        drop = set(self._rng.sample(list(self.candidates), num_drop))
        kept = [i for i in range(self.num_samples) if (i, 0) not in drop]
        index = {i: pos for pos, i in enumerate(kept)}
        return kept, index

    def _combine(self, per_view: list[set[tuple[int, int]]], k: int) -> set[tuple[int, int]]:
        chosen = set.intersection(*per_view)
        if len(per_view) > 1 and len(chosen) < TOPUP_FRACTION * k:
            rest = list(set.union(*per_view) - chosen)
            chosen |= set(self._rng.sample(rest, k - len(chosen)))
        return chosen
