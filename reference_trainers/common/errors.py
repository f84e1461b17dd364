"""The TrainerError family: every error the reference trainers raise on purpose.

Each message names what was received (a path, a value), what was expected, and the fix. Catch
`TrainerError` to catch them all; each subclass also derives from the builtin a caller expects.
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base of every error the reference trainers raise on purpose."""


class DataError(TrainerError, ValueError):
    """A data file, directory, split, caption template or data option cannot be used."""


class RunDirError(TrainerError, OSError):
    """The run directory (--out) or a file in it cannot be created, written or read: the
    message names the path and the cause (a file in the way, no permission, a full disk)."""


class CheckpointError(TrainerError, ValueError):
    """A checkpoint cannot be written, fails its checksum, or cannot be loaded."""


class ResumeError(TrainerError, ValueError):
    """--resume cannot continue the run exactly: its checkpoints and its store do not hold a
    matching (checkpoint, snapshot) pair. The message says what is there and what to do."""
