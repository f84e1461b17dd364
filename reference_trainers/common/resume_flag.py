"""`--resume`, `--resume latest` and `--resume PATH` (open_clip's meanings) on our run directory.

open_clip resumes `--resume latest` from LOGS/NAME/checkpoints and `--resume PATH` from a
checkpoint file. Here a run directory holds the model checkpoints and the pruner's store
together, and a run continues from the newest epoch that has both (common/resume.py), so:

    --resume  /  --resume latest     continue the run in --out (or --logs/--name)
    --resume RUN                     continue the run directory RUN (= --out RUN --resume)
    --resume RUN/checkpoints/epoch_00000007.pt
                                     the same, when that file is RUN's newest checkpoint; an
                                     older one is refused: the store keeps the pruner's state
                                     of the two newest epochs only, so the run cannot continue
                                     exactly from an older epoch

Anything else is refused with what is accepted. After `resolve_resume`, `args.resume` is a bool
and `args.out` the run directory, as the trainers expect.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

__all__ = ["RESUME_HELP", "resolve_resume"]

RESUME_HELP = ("continue a run: bare or 'latest' continues --out; a run directory, or its "
               "newest checkpoint file, continues that run (open_clip's --resume latest|PATH)")
_CKPT = re.compile(r"^epoch_(\d{8})\.(pt|msgpack|npz)$")


def _newest_checkpoint(run: Path) -> Path | None:
    found = sorted((int(m.group(1)), p) for p in (run / "checkpoints").glob("epoch_*")
                   if (m := _CKPT.match(p.name)))
    return found[-1][1] if found else None


def resolve_resume(args: argparse.Namespace, error: Callable[[str], None]
                   ) -> argparse.Namespace:
    """Turn the parsed --resume value into (args.resume: bool, args.out); `error` is the
    parser's (it exits with status 2)."""
    value = getattr(args, "resume", None)
    if value in (None, False):
        args.resume = False
        return args
    if value in (True, "latest"):
        args.resume = True
        return args
    path = Path(value)
    if path.is_dir():
        run = path
    elif path.is_file() and _CKPT.match(path.name) and path.parent.name == "checkpoints":
        run = path.parent.parent
        newest = _newest_checkpoint(run)
        if newest is None or newest.resolve() != path.resolve():
            error(f"--resume {value}: {run}'s newest checkpoint is {newest}; a run continues "
                  "from its newest epoch only (the store keeps the pruner's state of the two "
                  f"newest epochs): pass --resume {run}, or load {path.name}'s weights into a "
                  "new run yourself")
    else:
        error(f"--resume {value}: expected 'latest', a run directory or its newest checkpoint "
              "file RUN/checkpoints/epoch_NNNNNNNN.pt; no such directory or checkpoint")
        raise AssertionError  # error exits
    out = getattr(args, "out", None)
    if out is not None and Path(out).resolve() != run.resolve():
        error(f"--resume {value} continues {run}, but --out is {out}: give one of them")
    args.out, args.resume = str(run), True
    return args
