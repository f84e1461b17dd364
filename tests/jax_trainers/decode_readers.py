"""Readers for the --workers tests (test_jax_workers.py): picklable, and importable by a
spawned decode worker without JAX or torch (this module imports neither)."""

from __future__ import annotations

import os
import sys

from reference_trainers.common.corpora.arrays import FileReader


class LoggingReader(FileReader):
    """A FileReader that appends "pid id frameworks" to `log` for every read, so a test sees
    which process read which sample (and that a pruned one was never read), and whether that
    process had imported jax or torch (frameworks: 1) or neither (0)."""

    def __init__(self, paths, log):
        super().__init__(paths)
        self.log = str(log)

    def __call__(self, i: int) -> bytes:
        with open(self.log, "a") as out:
            frameworks = int("jax" in sys.modules or "torch" in sys.modules)
            out.write(f"{os.getpid()} {i} {frameworks}\n")
        return super().__call__(i)


class FailingReader(FileReader):
    """Raises an unexpected error (not a bad sample) when reading sample `bad`."""

    def __init__(self, paths, bad: int):
        super().__init__(paths)
        self.bad = bad

    def __call__(self, i: int) -> bytes:
        if i == self.bad:
            raise RuntimeError("the reader broke")
        return super().__call__(i)


class DyingReader(FailingReader):
    """Ends its process abruptly (as the kernel's OOM killer would) when reading `bad`."""

    def __call__(self, i: int) -> bytes:
        if i == self.bad:
            os._exit(7)
        return super().__call__(i)
