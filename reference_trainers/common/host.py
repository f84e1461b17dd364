"""The host a number was measured on, as results and pins record it."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name with the family / model / stepping that tell its generation apart,
    e.g. "AMD EPYC (cpu family 26, model 2, stepping 1)". A VM may mask the model name (two
    EPYC generations both say "AMD EPYC") while their float kernels round differently, so
    the name alone does not say whether two runs can match bit for bit.

    cpuinfo: the text of /proc/cpuinfo (read when None; only the first processor's block
    counts). Without it (not Linux): platform.processor(), or "unknown".
    """
    if cpuinfo is None:
        with contextlib.suppress(OSError):
            cpuinfo = Path("/proc/cpuinfo").read_text()
    name, generation = platform.processor() or "unknown", {}
    for line in (cpuinfo or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            name = value.strip()
        elif key in ("cpu family", "model", "stepping"):
            generation.setdefault(key, value.strip())
        elif not key:  # the first processor's block has ended
            break
    if generation:
        name += " (" + ", ".join(f"{k} {v}" for k, v in generation.items()) + ")"
    return name
