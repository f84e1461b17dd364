"""Creating a loss store so that it appears complete or not at all (issue 15, item 8).

`LossStore.open` builds a new store in a private directory beside its path and renames it into
place: a kill at any moment leaves either no store or a whole one (a root zarr.json with the
run's meta), never a store whose meta is missing. A directory left by an older creation cut
short (scan_core <= 0.1 created in place) holds only the store's own folders and no completed
snapshot; `abandoned_creation` recognises it and `clear_abandoned` empties it for a fresh start.
The writer lock taken after creation is lock.py's.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from typing import Any

import zarr

from scan_core import lock as lock_module
from scan_core.errors import ScanStoreError

STORE_ENTRIES = {"snapshots", "history", lock_module.LOCK_NAME}


def abandoned_creation(path: str) -> bool:
    """A directory holding only the store's own folders, no root zarr.json and no completed
    snapshot: what a kill during creation by scan_core <= 0.1 left (item 8 of issue 15)."""
    entries = set(os.listdir(path))
    if "zarr.json" in entries or not entries <= STORE_ENTRIES:
        return False
    snaps = os.path.join(path, "snapshots")
    names = os.listdir(snaps) if os.path.isdir(snaps) else []
    for name in names:
        try:
            with open(os.path.join(snaps, name, "zarr.json"), encoding="utf-8") as fh:
                if json.load(fh).get("attributes", {}).get("complete") is True:
                    return False
        except (OSError, ValueError, AttributeError):
            continue
    return True


def clear_abandoned(path: str) -> None:
    # A lock here is stale too: locks are taken only after the root exists.
    for name in ("snapshots", "history"):
        shutil.rmtree(os.path.join(path, name), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(path, lock_module.LOCK_NAME))


def create_atomically(path: str, root_attrs: dict[str, Any]) -> bool:
    """Build a new store with `root_attrs` beside `path` and rename it into place (an empty
    directory at `path` is replaced). False when another process created `path` first."""
    parent = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(parent, f".{os.path.basename(path)}.creating-{uuid.uuid4().hex[:12]}")
    try:
        os.makedirs(parent, exist_ok=True)
        group = zarr.open_group(temp, mode="w", zarr_format=3)
        group.attrs.update(root_attrs)
        try:
            os.rename(temp, path)
        except OSError:
            if os.path.isdir(path) and os.listdir(path):
                return False  # created meanwhile by another process: open theirs
            raise
        return True
    except OSError as exc:
        raise ScanStoreError(
            f"cannot create the SCAN store {path!r} ({type(exc).__name__}: "
            f"{exc.strerror or exc}): its parent must be a directory this process can write "
            f"{'(the disk is full)' if exc.errno == errno.ENOSPC else ''}. Fix the path or the "
            "permissions, or point `store` elsewhere.") from exc
    finally:
        shutil.rmtree(temp, ignore_errors=True)
