"""The loss store: a run's pruner state persisted to Zarr (v3), one snapshot per epoch.

Layout (documented for users in docs/store.md):

    scan.zarr/
      zarr.json                      root attrs: {"scan_store": 1, "meta": {config, num_samples,
                                     num_views, world_size}}
      snapshots/epoch_00000007/      the pruner state after epoch 7 ended
        zarr.json                    attrs: {"state": scalars, "checksums": {array: crc32},
                                     "complete": true}   (written last: the commit)
        red_bits, ill_bits, ...      packed candidate bitmaps and other state arrays
      history/epoch_00000004/        optional per-view losses of a preparation epoch
        losses                       (num_views, N) float16 or float32; NaN = not seen

A snapshot counts only once its attrs say complete and every array matches its checksum, so a
run killed at any moment (mid-chunk, mid-attrs) resumes from the last completed epoch: a
half-written newest snapshot is skipped with a warning. A completed snapshot that fails its
checksum is corruption, not a kill, and raises ScanStoreCorruptError. The two newest complete
snapshots are kept.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
import weakref
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import zarr

from scan_core import lock as lock_module
from scan_core.comm import Communicator, all_or_none
from scan_core.config import with_later_defaults
from scan_core.errors import (ScanResumeError, ScanStoreCorruptError, ScanStoreError,
                              ScanStoreMismatchError)
from scan_core.store_create import abandoned_creation, clear_abandoned, create_atomically

STORE_SCHEMA = 1
KEEP_SNAPSHOTS = 2
_CHUNK_BYTES = 1 << 22
# History chunks run along samples, all views in one chunk, so history.py can read N = 1e9
# samples a slice at a time (a row-major chunk would be a whole 2 GB row).
HISTORY_CHUNK_SAMPLES = 1 << 20


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars in a state record."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"state value {value!r} of type {type(value).__name__} is not JSON-able")


def _json_crc(value: Any) -> int:
    """crc32 of the canonical JSON of a state record (sorted keys)."""
    return zlib.crc32(json.dumps(value, sort_keys=True).encode("utf-8")) & 0xFFFFFFFF


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    if not shape:
        return ()
    inner = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    rows = max(1, _CHUNK_BYTES // max(1, inner * itemsize))
    return (min(max(shape[0], 1), rows),) + tuple(max(s, 1) for s in shape[1:])


class LossStore:
    """A Zarr group holding one run's snapshots. Use `LossStore.open` to create or resume."""

    def __init__(self, path: str | os.PathLike[str], group: zarr.Group, meta: dict[str, Any],
                 writable: bool) -> None:
        self.path = os.fspath(path)
        self._group = group
        self.meta = meta
        self.writable = writable
        self._lock: str | None = None
        self._finalizer: weakref.finalize | None = None

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], meta: dict[str, Any], *,
             writable: bool = True) -> "LossStore":
        """Create the store at `path`, or open an existing one written with the same `meta`.

        meta: {"config": dict, "num_samples": int, "num_views": int, "world_size": int}.
        writable: take the store's writer lock (one writing process per store) and check that
          it can be written; False opens it to read (the other ranks, analysis).
        A new store appears complete or not at all (built beside `path`, then renamed into
        place); a directory left by a creation cut short (no root zarr.json, no completed
        snapshot, nothing but the store's own folders) is created afresh with a warning.
        """
        path = os.fspath(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise ScanStoreError(
                f"SCAN store path {path!r} is a file, not a directory; point `store` at a "
                "directory (it is created if missing), e.g. 'run/scan.zarr'.")
        if os.path.isdir(path) and os.listdir(path) and not abandoned_creation(path):
            return cls._open_existing(path, meta, writable)
        if not writable:
            raise ScanStoreCorruptError(
                f"no SCAN store at {path!r} (expected {os.path.join(path, 'zarr.json')}); the "
                "writing rank creates it.")
        if os.path.isdir(path) and os.listdir(path):
            warnings.warn(f"SCAN store {path!r} has no root zarr.json and no completed "
                          "snapshot (its creation was cut short); creating it afresh.",
                          stacklevel=3)
            clear_abandoned(path)
        # or another process created it first: open theirs alike
        create_atomically(path, {"scan_store": STORE_SCHEMA, "meta": meta})
        return cls._open_existing(path, meta, writable)

    @classmethod
    def _open_existing(cls, path: str, meta: dict[str, Any], writable: bool) -> "LossStore":
        stored = cls.read_meta(path)
        _compare_meta(path, stored, meta)
        lock = lock_module.acquire(path) if writable else None
        try:
            group = zarr.open_group(path, mode="a" if writable else "r", zarr_format=3)
        except Exception:
            if lock is not None:
                lock_module.release(lock)
            raise
        store = cls(path, group, stored, writable)
        store._lock = lock
        if lock is not None:
            store._finalizer = weakref.finalize(store, lock_module.release, lock)
        return store

    def close(self) -> None:
        """Release the writer lock (writable stores); the store can no longer be written."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
        self.writable = False

    @staticmethod
    def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
        """The meta a store was created with; ScanStoreCorruptError when unreadable."""
        root_json = os.path.join(os.fspath(path), "zarr.json")
        try:
            with open(root_json, encoding="utf-8") as fh:
                attrs = json.load(fh).get("attributes", {})
        except FileNotFoundError as exc:
            raise ScanStoreCorruptError(
                f"{path!r} is not empty but has no zarr.json: not a SCAN store, or its creation "
                "was cut short. Delete it or point `store` elsewhere.") from exc
        except (OSError, ValueError, AttributeError) as exc:
            raise ScanStoreCorruptError(
                f"cannot read the root metadata {root_json!r} ({exc}); the store is corrupt. "
                "Delete it to start the run afresh.") from exc
        if attrs.get("scan_store") != STORE_SCHEMA or "meta" not in attrs:
            raise ScanStoreCorruptError(
                f"{root_json!r} does not describe a SCAN store of schema {STORE_SCHEMA} "
                f"(scan_store={attrs.get('scan_store')!r}).")
        return attrs["meta"]

    # -- snapshots --------------------------------------------------------------------------
    def write_snapshot(self, epoch: int, state: dict[str, Any]) -> None:
        """Persist the pruner state after `epoch`; the complete flag is written last."""
        if not self.writable:
            return
        try:
            self._write_snapshot(epoch, state)
        except OSError as exc:
            raise ScanStoreError(
                f"SCAN store {self.path!r}: writing the snapshot of epoch {epoch} failed "
                f"({type(exc).__name__}: {exc.strerror or exc})"
                f"{'; the disk is full' if exc.errno == errno.ENOSPC else ''}. The pruner is "
                "left where the store is (its epoch still open): fix the cause and call "
                "end_epoch() again, or resume later from the last completed snapshot.") from exc

    def _write_snapshot(self, epoch: int, state: dict[str, Any]) -> None:
        arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
        # The scalars go through JSON once here, so that what is checksummed is exactly what
        # a reader will load back.
        scalars = json.loads(json.dumps(
            {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}, default=_plain))
        snaps = self._group.require_group("snapshots")
        name = f"epoch_{epoch:08d}"
        shutil.rmtree(os.path.join(self.path, "snapshots", name), ignore_errors=True)
        node = snaps.create_group(name, overwrite=True)
        checksums = {}
        for key, value in arrays.items():
            arr = node.create_array(key, shape=value.shape, dtype=value.dtype,
                                    chunks=_chunks(value.shape, value.dtype.itemsize))
            if value.size:
                arr[...] = value
            checksums[key] = _crc(value)
        node.attrs.update({"state": scalars, "state_checksum": _json_crc(scalars),
                           "checksums": checksums, "complete": True})
        self._prune_old()

    def load_latest(self) -> dict[str, Any] | None:
        """The newest completed snapshot as a state dict, or None when there is none."""
        for name in reversed(self._snapshot_names()):
            attrs = self._snapshot_attrs(name)
            if attrs is None:
                warnings.warn(f"SCAN store {self.path!r}: snapshot {name} was not completed "
                              "(the run was stopped while writing it); resuming from the one "
                              "before.", stacklevel=3)
                continue
            return self._read_snapshot(name, attrs)
        return None

    def load_epoch(self, epoch: int) -> dict[str, Any]:
        """The completed snapshot written after `epoch`; ScanResumeError when there is none
        (only the two newest are kept)."""
        name = f"epoch_{epoch:08d}"
        attrs = self._snapshot_attrs(name) if name in self._snapshot_names() else None
        if attrs is None:
            raise ScanResumeError(
                f"SCAN store {self.path!r} has no completed snapshot of epoch {epoch} (it holds "
                f"{self.epochs()}); the checkpoint and the store belong to different runs, or "
                "the checkpoint is older than the two snapshots the store keeps.")
        return self._read_snapshot(name, attrs)

    def discard_after(self, epoch: int) -> None:
        """Delete snapshots (and loss history) of epochs after `epoch`: a run resumed from an
        older epoch must never later resume from a snapshot of its abandoned future."""
        if not self.writable:
            return
        for folder in ("snapshots", "history"):
            root = os.path.join(self.path, folder)
            if not os.path.isdir(root):
                continue
            for name in os.listdir(root):
                if name.startswith("epoch_") and name[6:].isdigit() and int(name[6:]) > epoch:
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def epochs(self) -> list[int]:
        """Epochs with a completed snapshot, ascending."""
        return [int(n.split("_")[1]) for n in self._snapshot_names()
                if self._snapshot_attrs(n) is not None]

    def _snapshot_names(self) -> list[str]:
        # Listed from the file system, not through zarr: a half-written snapshot may have no
        # (or a truncated) zarr.json, which zarr's own listing refuses to parse.
        folder = os.path.join(self.path, "snapshots")
        if not os.path.isdir(folder):
            return []
        return sorted(n for n in os.listdir(folder)
                      if n.startswith("epoch_") and n[6:].isdigit())

    def _snapshot_attrs(self, name: str) -> dict[str, Any] | None:
        path = os.path.join(self.path, "snapshots", name, "zarr.json")
        try:
            with open(path, encoding="utf-8") as fh:
                attrs = json.load(fh).get("attributes", {})
        except (OSError, ValueError, AttributeError):
            return None
        return attrs if attrs.get("complete") is True else None

    def _read_snapshot(self, name: str, attrs: dict[str, Any]) -> dict[str, Any]:
        if "state_checksum" not in attrs:
            warnings.warn(f"SCAN store {self.path!r}: snapshot {name} was written before state "
                          "records were checksummed (scan_core < 0.2); its scalars are not "
                          "verified.", stacklevel=4)
        elif _json_crc(attrs.get("state")) != attrs["state_checksum"]:
            raise ScanStoreCorruptError(
                f"SCAN store {self.path!r}: the state record of {name} (next_epoch, visits, "
                "warm-up, log...) fails its checksum; it was edited or damaged after it was "
                "written. Restore the store from a copy, resume from an older snapshot "
                "(resume_epoch), or start afresh.")
        if not isinstance(attrs.get("state"), dict) or not isinstance(attrs.get("checksums"), dict):
            raise ScanStoreCorruptError(
                f"SCAN store {self.path!r}: snapshot {name} has no readable state record.")
        state = dict(attrs["state"])
        for key, crc in attrs["checksums"].items():
            try:
                node = zarr.open_array(os.path.join(self.path, "snapshots", name, key), mode="r")
                value = np.asarray(node[...])
            except Exception as exc:  # zarr raises many kinds on damaged chunks
                raise ScanStoreCorruptError(
                    f"SCAN store {self.path!r}: array {name}/{key} of a completed snapshot cannot "
                    f"be read ({type(exc).__name__}: {exc}); the store is corrupt.") from exc
            if _crc(value) != crc:
                raise ScanStoreCorruptError(
                    f"SCAN store {self.path!r}: array {name}/{key} fails its checksum; the store "
                    "was damaged after it was written. Restore it or start afresh.")
            state[key] = value
        return state

    def _prune_old(self) -> None:
        complete = [n for n in self._snapshot_names() if self._snapshot_attrs(n) is not None]
        for name in complete[:-KEEP_SNAPSHOTS]:
            shutil.rmtree(os.path.join(self.path, "snapshots", name), ignore_errors=True)

    # -- loss history -----------------------------------------------------------------------
    def write_history(self, epoch: int, losses: Any, dtype: str) -> None:
        """Per-view losses of a preparation epoch, (num_views, N), NaN where unseen: an array,
        or an object with `.sum.shape` and `.mean(lo, hi)` (EpochLosses), written one chunk of
        samples at a time so that no (num_views, N) copy is made."""
        if not self.writable:
            return
        hist = self._group.require_group("history")
        node = hist.create_group(f"epoch_{epoch:08d}", overwrite=True)
        shape = tuple(losses.shape if isinstance(losses, np.ndarray) else losses.sum.shape)
        step = max(1, min(shape[1], HISTORY_CHUNK_SAMPLES))
        arr = node.create_array("losses", shape=shape, dtype=np.dtype(dtype),
                                chunks=(max(shape[0], 1), step))
        for lo in range(0, shape[1], step):
            hi = min(shape[1], lo + step)
            part = losses[:, lo:hi] if isinstance(losses, np.ndarray) else losses.mean(lo, hi)
            arr[:, lo:hi] = part.astype(dtype)
        node.attrs.update({"complete": True})

    def history_epochs(self) -> list[int]:
        if "history" not in self._group:
            return []
        return [int(n.split("_")[1]) for n in sorted(self._group["history"].group_keys())
                if self._group["history"][n].attrs.get("complete") is True]

    def read_history(self, epoch: int) -> np.ndarray:
        return np.asarray(self.history_array(epoch)[...])

    def history_array(self, epoch: int) -> Any:
        """The zarr array of a history epoch, unread: slice it ([:, lo:hi]) to read a chunk."""
        return self._group[f"history/epoch_{epoch:08d}/losses"]


def open_on_ranks(path: str | os.PathLike[str], meta: dict[str, Any], comm: Communicator,
                  resume_epoch: int | None, load_state: Callable[[dict[str, Any]], None]
                  ) -> LossStore:
    """Open a run's store on every rank (a collective) and hand the state to resume, if any,
    to `load_state`: the newest snapshot (resume_epoch None), exactly `resume_epoch`'s (later
    ones discarded), or none (-1: start afresh over the store).

    Rank 0 creates or validates first, then the others open it read-only. Each phase ends in
    a collective that also carries failures, so a rank that fails (another config, a corrupt
    store) makes every rank raise instead of leaving the others in a collective."""
    opened: list[LossStore] = []

    def create() -> None:
        if comm.rank == 0:
            opened.append(LossStore.open(path, meta, writable=True))

    def join_and_load() -> None:
        if comm.rank != 0:
            opened.append(LossStore.open(path, meta, writable=False))
        store = opened[0]
        if resume_epoch is None:
            state = store.load_latest()
        else:
            state = store.load_epoch(resume_epoch) if resume_epoch >= 0 else None
            store.discard_after(resume_epoch)
        if state is not None:
            load_state(state)

    all_or_none(comm, create, f"opening the store {os.fspath(path)!r}")
    all_or_none(comm, join_and_load, f"resuming from the store {os.fspath(path)!r}")
    return opened[0]


def _compare_meta(path: str, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Raise naming every field where the store and this run differ."""
    diffs = []
    for key in ("num_samples", "num_views"):
        if stored.get(key) != wanted.get(key):
            diffs.append(f"{key}: store has {stored.get(key)!r}, this run has {wanted.get(key)!r}")
    s_cfg = with_later_defaults(stored.get("config", {}))
    w_cfg = with_later_defaults(wanted.get("config", {}))
    for key in sorted(set(s_cfg) | set(w_cfg)):
        if s_cfg.get(key) != w_cfg.get(key):
            diffs.append(f"config.{key}: store has {s_cfg.get(key)!r}, "
                         f"this run has {w_cfg.get(key)!r}")
    if diffs:
        raise ScanStoreMismatchError(
            f"SCAN store {path!r} was written by another run: " + "; ".join(diffs)
            + ". Use the original settings to resume, or a new store path for a new run.")
    if stored.get("world_size") != wanted.get("world_size"):
        raise ScanResumeError(
            f"SCAN store {path!r} was written with world_size={stored.get('world_size')}, this "
            f"run has world_size={wanted.get('world_size')}: per-batch candidates depend on the "
            "local batches of each rank, so the run cannot continue identically. Resume with "
            f"{stored.get('world_size')} ranks, or start a new store.")
