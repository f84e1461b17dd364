"""The framework an adapter needs, checked before the adapter imports it.

`import adapters.torch` without PyTorch would otherwise fail deep inside with a bare
"No module named 'torch'"; this names the extra that installs it instead.
"""

from __future__ import annotations

import importlib


def require_framework(module: str, *, extra: str) -> None:
    """Import `module`, or raise ImportError naming the extra of scan-prune that installs it."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"adapters.{extra} needs {module!r}, which cannot be imported here ({exc}). Install "
            f"it with `pip install 'scan-prune[{extra}]'` (this leaves a {module} that is already "
            f"installed alone), or install {module} yourself first, e.g. the CUDA build your "
            "machine needs.", name=module) from exc
