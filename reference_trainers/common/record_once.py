"""Each id recorded once per epoch, whatever the data served (numpy and scan_core only).

A shard stream tops up short workers, and refills corrupt images, with repeats of ids it
served in earlier batches of the epoch (docs/corpora.md, section 4); a CSV corpus refills bad
slots with ids of the same batch. The pruner wants one loss per kept id per epoch: a repeat
recorded again would count twice in `num_recorded` (and, with the core's coverage check, warn).
`RecordOnce.fresh(ids)` keeps each id's first appearance in the epoch; its memory is a bitmap of
N bits (125 MB at N = 1e9), cleared by `new_epoch()`.

>>> once = RecordOnce(10)
>>> once.fresh(np.array([3, 1, 3]))
array([ True,  True, False])
>>> once.fresh(np.array([1, 4])).tolist(), once.new_epoch(), once.fresh(np.array([1])).tolist()
([False, True], None, [True])
>>> once.first_fresh(np.array([7, 1, 7, 9]))       # (sorted fresh ids, their positions)
(array([7, 9]), array([0, 3]))
"""

from __future__ import annotations

import numpy as np

from scan_core import bitset

__all__ = ["RecordOnce"]


class RecordOnce:
    def __init__(self, num_samples: int) -> None:
        self._seen = bitset.new_bits(int(num_samples))

    def new_epoch(self) -> None:
        self._seen[:] = 0

    def fresh(self, ids: np.ndarray) -> np.ndarray:
        """bool (B,): True where the id appears for the first time this epoch (also the first
        of repeats inside `ids`); marks them seen."""
        ids = np.asarray(ids, dtype=np.int64)
        _, first = np.unique(ids, return_index=True)
        keep = np.zeros(len(ids), dtype=bool)
        keep[first] = True
        keep &= ~bitset.test_ids(self._seen, ids)
        bitset.set_ids(self._seen, ids[keep])
        return keep

    def first_fresh(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the ids appearing for the first time this epoch, sorted; the position in `ids` of
        each one's first appearance), as np.unique(ids, return_index=True) over fresh ids."""
        ids = np.asarray(ids, dtype=np.int64)
        positions = np.flatnonzero(self.fresh(ids))
        order = np.argsort(ids[positions], kind="stable")
        return ids[positions][order], positions[order]
