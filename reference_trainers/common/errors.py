"""The TrainerError family: every error the reference trainers raise on purpose.

Each message names what was received (a path, a value), what was expected, and the fix. Catch
`TrainerError` to catch them all; each subclass also derives from the builtin a caller expects.
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base of every error the reference trainers raise on purpose."""


class DataError(TrainerError, ValueError):
    """A data file, directory, split, caption template or data option cannot be used."""
