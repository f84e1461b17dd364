"""The samples a run could not read, as the run directory's `skipped.jsonl` (numpy only).

Every corpus keeps its bad samples by id with a reason (docs/corpora.md, section 3): a CSV or
folder corpus in `corpus.skipped` (found at load or at decode), a shard stream in
`index.skipped` (at index time) and `stream.stats.corrupt` (at decode, on this process). After
each epoch rank 0 rewrites `skipped.jsonl`, one JSON object per sample:

    {"id": 17, "source": "images/cat_017.jpg", "reason": "decode: cannot identify image file"}

(`source`: the image path of a CSV or folder corpus, the sample key of a shard), and prints one
line when the list grew. A resumed run starts from the file's list: what was found before the
stop stays listed and is not counted again as new. Fashion-MNIST has no bad samples and writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reference_trainers.common.errors import DataError, RunDirError
from reference_trainers.common.rundir import RunDir, write_bytes_atomically

__all__ = ["SkippedLog", "skipped_samples"]


def skipped_samples(data: Any) -> dict[int, tuple[str, str]]:
    """{id: (path or key, reason)} of the samples `data` (a TrainData, common/data_layer.py)
    has skipped so far ({} for in-memory data such as Fashion-MNIST)."""
    return data.skipped_samples()


def read_skipped(path: Path) -> dict[int, tuple[str, str]]:
    """{id: (source, reason)} of a `skipped.jsonl` ({} when there is none); a line that is not
    one of its records is a RunDirError naming the file and the line."""
    if not path.exists():
        return {}
    out: dict[int, tuple[str, str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
            out[int(record["id"])] = (str(record["source"]), str(record["reason"]))
        except (ValueError, KeyError, TypeError) as err:
            raise RunDirError(f"{path}, line {number}, is not a skipped-sample record ({err}): "
                              f"{line[:80]!r}; the file is rewritten after each epoch, so delete "
                              "it to start the list over.") from err
    return out


class SkippedLog:
    """Writes `skipped.jsonl` in `run` after each epoch (rank 0) and says what is new."""

    def __init__(self, run: RunDir, data: Any, *, write: bool = True) -> None:
        self.run, self.data, self.write = run, data, write  # write: this process is rank 0
        # What the file lists already: a resumed run's corpus is loaded afresh and has not yet
        # met the samples found at decode before the stop; they stay listed, and are not new.
        self.listed = read_skipped(run.path / "skipped.jsonl")

    def __call__(self, epoch: int, samples_trained: int) -> str | None:
        """Rewrite the file when the list grew; the line to print, or None. A run whose epoch
        trained on no sample because none could be read is a DataError (not the pruner's 'no
        losses were recorded')."""
        found = {**self.listed, **skipped_samples(self.data)}
        if samples_trained == 0 and found:
            self._write(found)
            reasons = "; ".join(f"{src}: {why}" for src, why in list(found.values())[:3])
            raise DataError(f"epoch {epoch} trained on no sample: every sample it planned "
                            f"could not be read ({len(found)} skipped, e.g. {reasons}). The "
                            f"list is in {self.run.path / 'skipped.jsonl'}; check the corpus's "
                            "images (and that Pillow reads their format).")
        if len(found) == len(self.listed):  # nothing new (Fashion-MNIST: never anything)
            return None
        new = len(found) - len(self.listed)
        self._write(found)
        self.listed = found
        return (f"epoch {epoch}: {len(found)} samples skipped so far ({new} new), listed in "
                f"{self.run.path / 'skipped.jsonl'}")

    def _write(self, found: dict[int, tuple[str, str]]) -> None:
        if not self.write:
            return
        lines = "".join(json.dumps({"id": i, "source": src, "reason": why}) + "\n"
                        for i, (src, why) in sorted(found.items()))
        write_bytes_atomically(self.run.path / "skipped.jsonl", lines.encode(), "write")
