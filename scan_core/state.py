"""The pruner's saved state: its schema version and the checks a state must pass to resume.

`ScanPruner.state_dict()` is a flat dict of JSON-able scalars and numpy arrays (the Zarr store
writes the arrays as arrays and the scalars as attributes); a state resumes only into a pruner
of the same config, dataset size, view count and world size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scan_core import bitset
from scan_core.config import with_later_defaults
from scan_core.errors import ScanResumeError
from scan_core.warmup import WarmupState

STATE_SCHEMA = 2

# The pruner's saved state, listed once: state key -> the ScanPruner attribute that holds it.
# Scalars are JSON numbers; the warm-up state is saved as two keys and the log as a list of
# dicts (handled by name); arrays are numpy (ema_losses, scores and ill_prev_bits, the raw
# ill-matched ends of the last ill_persistence - 1 preparations, retired_bits, the samples a
# retire_share rule dropped for good, only under the configs that use them). state_dict,
# load_state_dict (parse_state) and end_epoch's rollback read this.
SCALAR_FIELDS: dict[str, tuple[str, type]] = {
    "next_epoch": ("_next_epoch", int), "scale": ("_scale", float),
    "schedule_floor": ("_floor", float), "num_preparations": ("_num_preparations", int),
    "visits_kept": ("_visits_kept", int), "visits_full": ("_visits_full", int)}
ARRAY_FIELDS: dict[str, str] = {"red_bits": "_red", "ill_bits": "_ill",
                                "ema_losses": "_ema", "scores": "_scores",
                                "ill_prev_bits": "_ill_prev", "retired_bits": "_retired"}
OTHER_ATTRIBUTES = ("_warmup", "_log")  # warmup_prev_loss + warmup_e0, and log
STATE_ATTRIBUTES = tuple(a for a, _ in SCALAR_FIELDS.values()) + tuple(ARRAY_FIELDS.values()) \
    + OTHER_ATTRIBUTES
# Versions this code resumes. 1: before schedule_floor (a target rate's beta; 0 then).
READABLE_SCHEMAS = (1, 2)


def check_state(state: dict[str, Any], *, config: dict[str, Any], num_samples: int,
                num_views: int, world_size: int) -> None:
    """Raise ScanResumeError naming what differs between `state` and the resuming pruner."""
    if state.get("schema_version") not in READABLE_SCHEMAS:
        raise ScanResumeError(
            f"state schema_version {state.get('schema_version')!r} is not one this scan_core "
            f"reads {READABLE_SCHEMAS}; it was written by a newer scan_core. Upgrade to resume.")
    mine = {"config": config, "num_samples": num_samples, "num_views": num_views}
    theirs = {**state, "config": with_later_defaults(state.get("config") or {})}
    diffs = [f"{k}: state has {theirs.get(k)!r}, this pruner has {v!r}"
             for k, v in mine.items() if theirs.get(k) != v]
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


def parse_state(state: dict[str, Any], *, num_views: int, num_samples: int, with_ema: bool,
                with_scores: bool, ill_prev_rows: int = 0,
                with_retired: bool = False) -> dict[str, Any]:
    """The pruner attributes a checked `state` restores, as {attribute name: value}, built
    without touching any pruner; ScanResumeError naming the field when one is missing, of the
    wrong type, or inconsistent with the others (an edited state)."""
    def field(key: str, kind: type, default: Any = ...) -> Any:
        if key not in state:
            if default is not ...:
                return default
            raise ScanResumeError(f"state has no {key!r}; it was not written by state_dict().")
        value = state[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                            or value < 0):
            raise ScanResumeError(f"state[{key!r}] must be an int >= 0, got {value!r}.")
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ScanResumeError(f"state[{key!r}] must be a number, got {value!r}.")
        return kind(value)

    prev_loss, e0 = state.get("warmup_prev_loss"), state.get("warmup_e0")
    if prev_loss is not None and (isinstance(prev_loss, bool)
                                  or not isinstance(prev_loss, (int, float))):
        raise ScanResumeError(f"state['warmup_prev_loss'] must be a number or None, "
                              f"got {prev_loss!r}.")
    if e0 is not None and (isinstance(e0, bool) or not isinstance(e0, (int, np.integer)) or e0 < 0):
        raise ScanResumeError(f"state['warmup_e0'] must be an int >= 0 or None, got {e0!r}.")
    log = state.get("log")
    if not isinstance(log, (list, tuple)) or not all(isinstance(e, dict) for e in log):
        raise ScanResumeError("state['log'] must be a list of dicts, one per completed epoch.")
    defaults = {"schedule_floor": 0.0} if state["schema_version"] == 1 else {}  # absent in 1
    values: dict[str, Any] = {attr: field(key, kind, defaults.get(key, ...))
                              for key, (attr, kind) in SCALAR_FIELDS.items()}
    values.update({
        "_warmup": WarmupState(prev_loss=None if prev_loss is None else float(prev_loss),
                               e0=None if e0 is None else int(e0)),
        "_log": [dict(e) for e in log],
        "_red": np.array(state["red_bits"], dtype=np.uint8, copy=True),
        "_ill": np.array(state["ill_bits"], dtype=np.uint8, copy=True),
    })
    epochs = values["_next_epoch"]
    if len(log) != epochs or values["_visits_full"] != epochs * num_samples \
            or values["_num_preparations"] > epochs:
        raise ScanResumeError(
            f"state is inconsistent: next_epoch {epochs}, {len(log)} log rows, visits_full "
            f"{values['_visits_full']} (expected {epochs} * {num_samples}), num_preparations "
            f"{values['_num_preparations']}; it was edited or damaged. Resume from an intact "
            "snapshot or start afresh.")
    if with_ema:
        values["_ema"] = _array(state, "ema_losses", np.float32, (num_views, num_samples))
    if with_scores:
        values["_scores"] = _array(state, "scores", np.float32, (num_samples,))
    if ill_prev_rows:
        values["_ill_prev"] = _array(state, "ill_prev_bits", np.uint8,
                                     (ill_prev_rows, bitset.num_bytes(num_samples)))
    if with_retired:
        values["_retired"] = _array(state, "retired_bits", np.uint8,
                                    (bitset.num_bytes(num_samples),))
    return values


def _array(state: dict[str, Any], key: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    if key not in state:
        raise ScanResumeError(f"state has no {key!r}, which this config needs.")
    value = np.array(state[key], dtype=dtype, copy=True)
    if value.shape != shape:
        raise ScanResumeError(f"state[{key!r}] has shape {value.shape}, expected {shape}.")
    return value
