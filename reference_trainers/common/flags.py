"""The command-line flags as text tables: `flag_table` reads one, and the tables every trainer
shares (CLIP's and MoCo's flags both use them: common/config.py, common/moco_config.py).

A row is `--flag TYPE help`: the config field is the flag's name with `_` for `-`, so a table
cannot name a flag and a field apart, and a table reads as the --help it becomes.
"""

from __future__ import annotations

from typing import Any

from reference_trainers.common.errors import TrainerError

__all__ = ["BOOKKEEPING_FLAGS", "LENGTH_FLAGS", "SHARD_FLAGS", "SUBSET_FLAGS", "flag_table"]


def flag_table(table: str) -> list[tuple[str, str, Any, str]]:
    """(flag, field, type, help) rows from a text table: one flag a line, `--flag TYPE help`
    (TYPE int, float or str; the field is the flag's name with `_` for `-`), a help text
    going on over the indented lines below it.

    >>> flag_table('''
    ...     --num-test   int   evaluation subset
    ...                        size
    ... ''')
    [('--num-test', 'num_test', <class 'int'>, 'evaluation subset size')]
    """
    rows: list[tuple[str, str, Any, str]] = []
    for line in table.strip("\n").splitlines():
        words = line.split(maxsplit=2)
        if words and words[0].startswith("--"):
            kinds = {"int": int, "float": float, "str": str}
            if len(words) < 2 or words[1] not in kinds:
                raise TrainerError(f"flag table line {line.strip()!r}: the type after the flag "
                                   f"must be one of {sorted(kinds)}")
            flag, kind = words[0], kinds[words[1]]
            rows.append((flag, flag[2:].replace("-", "_"), kind, words[2] if len(words) > 2
                         else ""))
        elif words:
            if not rows:
                raise TrainerError(f"flag table line {line.strip()!r}: a table starts with a "
                                   "flag (--name TYPE help)")
            flag, field, kind, text = rows[-1]
            rows[-1] = (flag, field, kind, f"{text} {' '.join(words)}")
    return rows


# Flags every trainer has (MoCo's config.FLAGS uses them too): the Fashion-MNIST subset, the
# run's length and batch, and the bookkeeping at the end of the list.
SUBSET_FLAGS = flag_table("""
    --num-train        int    class-balanced training subset size
    --num-test         int    evaluation subset size
    --duplicate-share  float  share of near-duplicate images
""")
LENGTH_FLAGS = flag_table("""
    --epochs      int  training epochs
    --batch-size  int  per-rank batch size
""")
BOOKKEEPING_FLAGS = flag_table("""
    --probe-every  int  linear probe every k epochs (0: end only)
    --seed         int  seed of data, model and pruning
    --threads      int  torch CPU threads
""")
# Shard sources (corpora/run_index.py) and checkpoints kept (rundir.py), CLIP's and MoCo's.
SHARD_FLAGS = flag_table("""
    --shard-index        str  the shards' key index file (default RUN/scan-index.npz: the
                              dataset folder is only read)
    --train-num-samples  int  open_clip's sample count of --train-data; checked against the
                              shard index (refused when it differs)
    --save-frequency     int  also keep the checkpoint of every k-th epoch (open_clip's; the
                              two newest are always kept for --resume)
""")
