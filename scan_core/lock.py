"""The store's writer lock: one writing process per store (issue 15, item 12).

A writable `LossStore.open` takes `<store>/writer.lock`, a small JSON file naming the holder
(pid, host, the process's start time from /proc and when it was taken). It is created
complete (written to a private file, then hard-linked into place, which fails when a lock
exists), so a reader never sees a half-written lock. Another process that finds it:

- is refused (ScanStoreLockedError naming pid and host) while the holder lives;
- takes it over with a warning when the holder is dead: same host and no such pid, or the pid
  now belongs to a process started at another time (a reused pid), or the file is unreadable;
- cannot tell whether a holder on another host lives, so it is refused with the file to
  delete once the user knows that run is over.

The same process may open the store again (a trainer that rebuilds its pruner): the lock is
counted per process and removed when the last writable store of that process closes, or at
exit. A kill leaves the file behind; the next run on the same host takes it over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from typing import Any

from scan_core.errors import ScanStoreError, ScanStoreLockedError

LOCK_NAME = "writer.lock"
_held: dict[str, int] = {}  # lock path -> writable stores of this process holding it
_guard = threading.Lock()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _me() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid),
            "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _is_me(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    return all(holder.get(k) == me[k] for k in ("pid", "host", "start"))


def _alive(holder: dict[str, Any]) -> bool:
    """Is a holder on this host still running? (False for a reused pid.)"""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    start = holder.get("start")
    return start is None or _start_time(pid) in (None, start)


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            holder = json.load(fh)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def acquire(store_path: str) -> str:
    """Take the writer lock of the store at `store_path`; return the lock file's path.
    Doubles as the check that the store can be written (ScanStoreError otherwise)."""
    lock = os.path.join(store_path, LOCK_NAME)
    me = _me()
    with _guard:
        for _ in range(3):
            try:
                if _link_new(lock, me):
                    _held[lock] = _held.get(lock, 0) + 1
                    return lock
            except OSError as exc:
                raise ScanStoreError(
                    f"SCAN store {store_path!r} cannot be written ({exc.strerror or exc}): "
                    "a writable store needs a directory this process may create files in "
                    "(not read-only, not a full disk). Fix the permissions or free space, or "
                    "point `store` elsewhere.") from exc
            holder = _read(lock)
            if holder is not None and _is_me(holder, me):
                _held[lock] = _held.get(lock, 0) + 1
                return lock
            same_host = holder is not None and holder.get("host") == me["host"]
            if holder is not None and (not same_host or _alive(holder)):
                raise ScanStoreLockedError(
                    f"SCAN store {store_path!r} is being written by pid {holder.get('pid')} on "
                    f"host {holder.get('host')!r} (lock taken {holder.get('taken_at')}); two "
                    "runs writing one store would overwrite each other's snapshots. Stop that "
                    "run or use another store path"
                    + ("." if same_host else f"; if that run is over, delete {lock!r}."))
            warnings.warn(
                f"SCAN store {store_path!r}: taking over the writer lock "
                + (f"of pid {holder.get('pid')}, which is no longer running on this host "
                   if holder is not None else "whose file is unreadable ")
                + "(a run that was killed).", stacklevel=4)
            try:
                os.remove(lock)
            except FileNotFoundError:
                pass
        raise ScanStoreLockedError(f"SCAN store {store_path!r}: could not take {lock!r}; "
                                   "another process keeps taking it.")


def _link_new(lock: str, me: dict[str, Any]) -> bool:
    """Create `lock` holding `me`, complete or not at all; False when a lock exists."""
    private = f"{lock}.{me['pid']}.{threading.get_ident()}.tmp"
    with open(private, "w", encoding="utf-8") as fh:
        json.dump(me, fh)
    try:
        os.link(private, lock)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(private)


def release(lock: str) -> None:
    """Drop one hold of this process on `lock`; the last one removes the file (if ours)."""
    with _guard:
        count = _held.get(lock, 0) - 1
        if count > 0:
            _held[lock] = count
            return
        _held.pop(lock, None)
        holder = _read(lock)
        if holder is not None and _is_me(holder, _me()):
            try:
                os.remove(lock)
            except OSError:
                pass
