"""The pruner's saved state: its schema version and the checks a state must pass to resume.

`ScanPruner.state_dict()` is a flat dict of JSON-able scalars and numpy arrays (the Zarr store
writes the arrays as arrays and the scalars as attributes); a state resumes only into a pruner
of the same config, dataset size, view count and world size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scan_core import bitset
from scan_core.errors import ScanResumeError

STATE_SCHEMA = 1


def check_state(state: dict[str, Any], *, config: dict[str, Any], num_samples: int,
                num_views: int, world_size: int) -> None:
    """Raise ScanResumeError naming what differs between `state` and the resuming pruner."""
    if state.get("schema_version") != STATE_SCHEMA:
        raise ScanResumeError(
            f"state schema_version {state.get('schema_version')!r} is not {STATE_SCHEMA}.")
    mine = {"config": config, "num_samples": num_samples, "num_views": num_views}
    diffs = [f"{k}: state has {state.get(k)!r}, this pruner has {v!r}"
             for k, v in mine.items() if state.get(k) != v]
    if diffs:
        raise ScanResumeError("state belongs to another run: " + "; ".join(diffs))
    if state.get("world_size") != world_size:
        raise ScanResumeError(
            f"state was saved with world_size={state.get('world_size')}, this run has "
            f"{world_size}; per-batch candidates depend on it. Resume with the same number of "
            "ranks.")
    nbytes = bitset.num_bytes(num_samples)
    for key in ("red_bits", "ill_bits"):
        if np.asarray(state[key]).shape != (nbytes,):
            raise ScanResumeError(f"state[{key!r}] has shape {np.shape(state[key])}, "
                                  f"expected ({nbytes},).")
