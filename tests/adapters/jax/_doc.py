"""Loads the trainer block of docs/embedding-jax.md as a module (for the tests that run it)."""

from __future__ import annotations

import pathlib
import re
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "embedding-jax.md"


def trainer_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "the doc should hold exactly one python block: the trainer"
    return blocks[0]


def load_trainer() -> dict:
    """The block as a module named train_clip_scan_jax (not __main__: main() does not run).
    It sits in sys.modules while it runs because flax modules are dataclasses, which look
    their module up there."""
    module = types.ModuleType("train_clip_scan_jax")
    sys.modules[module.__name__] = module
    try:
        exec(compile(trainer_source(), str(DOC), "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module.__dict__
