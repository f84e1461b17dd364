"""The ScanError family: every error scan_core raises on purpose.

Each message names what was received, what was allowed, and how to fix it. Catch `ScanError`
to catch them all; each subclass also derives from the builtin a caller would expect.
"""

from __future__ import annotations


class ScanError(Exception):
    """Base of every error scan_core raises on purpose."""


class ScanConfigError(ScanError, ValueError):
    """A ScanConfig field (or a pruner argument) is out of its allowed range."""


class ScanInputError(ScanError, ValueError):
    """ids or losses handed to `record` are malformed (dtype, shape, range, NaN/inf, repeats)."""


class ScanStateError(ScanError, RuntimeError):
    """A call out of order: record outside an epoch, end_epoch twice, the wrong epoch planned."""


class ScanStoreError(ScanError, OSError):
    """The loss store cannot be used."""


class ScanStoreCorruptError(ScanStoreError):
    """The store exists but its metadata or a completed snapshot fails to read or verify."""


class ScanStoreMismatchError(ScanStoreError):
    """The store was written by another config, dataset size, view count or rule."""


class ScanResumeError(ScanError, RuntimeError):
    """A resume that cannot continue the same run (e.g. the world size changed)."""


class ScanTargetUnreachableError(ScanConfigError):
    """The requested target share of saved sample-visits cannot be reached by the schedule."""


class ScanDistributedError(ScanError, RuntimeError):
    """Ranks disagree on something they must share (epoch, plan, resumed state)."""


class ScanCoverageError(ScanError, RuntimeError):
    """An epoch's records do not cover its kept ids once each (ids lost or recorded twice)."""


class ScanCoverageWarning(UserWarning):
    """The warning form of ScanCoverageError (ScanPruner's default, coverage="warn")."""


class ScanStoreLockedError(ScanStoreError):
    """Another live process holds the store's write lock."""
