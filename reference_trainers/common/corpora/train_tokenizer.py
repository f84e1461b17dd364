"""Train a byte-level BPE tokenizer on a corpus's own captions (offline, deterministic).

    python -m reference_trainers.common.corpora.train_tokenizer --from-csv pairs.csv \\
        --vocab-size 8192 --out tok.json
    python -m reference_trainers.common.corpora.train_tokenizer --from-shards shards/ \\
        --vocab-size 8192 --out tok.json
    python -m reference_trainers.clip --data csv:pairs.csv --tokenizer bpe:tok.json ...

Reads every non-empty caption (a CSV's caption column; every shard's .txt members, by the byte
ranges of the shard index), learns merges with `tokenizer_bpe.train_bpe` and writes the JSON
file. The same captions give the same file. Prints one JSON line: out, captions, vocab_size,
context_length, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

import numpy as np

from reference_trainers.common.corpora.images import read_csv_rows
from reference_trainers.common.corpora.run_index import index_for_run
from reference_trainers.common.corpora.shard_sources import is_streamed, read_streamed
from reference_trainers.common.errors import DataError, TrainerError
from reference_trainers.common.tokenizer_bpe import train_bpe


def captions_from_csv(path: str | os.PathLike, *, caption_column: str = "caption",
                      delimiter: str | None = None) -> list[str]:
    """The non-empty captions of a CSV / TSV (the header names the columns)."""
    rows = read_csv_rows(path, columns=[caption_column], delimiter=delimiter,
                         fix="pass --caption-column with the header's name")
    return [c for c in ((row.get(caption_column) or "").strip() for row in rows) if c]


def captions_from_shards(source: str | os.PathLike, *,
                         shard_index: str | os.PathLike | None = None) -> Iterator[str]:
    """The non-empty .txt members of a shard source (a folder, a .tar, a brace pattern, a '::'
    list, pipe:COMMAND), in id order. The index is `shard_index`, an index beside a folder's
    shards, or a temporary one: nothing is written into the dataset's folder."""
    with tempfile.TemporaryDirectory() as scratch:
        index = index_for_run(os.fspath(source), run_path=scratch, shard_index=shard_index)
        for shard, url in enumerate(index.shard_urls):
            ids = np.arange(index.shard_starts[shard], index.shard_starts[shard + 1])
            ids = ids[index.text_size[ids] > 0].tolist()
            if not ids:
                continue
            if is_streamed(url):
                texts = (text for _, _, text in read_streamed(index, shard, ids,
                                                              with_text=True))
            else:
                texts = _seek_texts(index, url, ids)
            yield from (text for text in texts if text)


def _seek_texts(index, url: str, ids: list[int]) -> Iterator[str]:
    with open(url, "rb") as handle:
        for sample_id in ids:
            handle.seek(int(index.text_offset[sample_id]))
            yield handle.read(int(index.text_size[sample_id])).decode("utf-8", "replace").strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference_trainers.common.corpora.train_tokenizer",
        description="Train a byte-level BPE tokenizer on the captions of a CSV or of tar shards.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-csv", metavar="FILE", help="CSV / TSV with a header row")
    source.add_argument("--from-shards", metavar="SOURCE",
                        help="webdataset-style tars: a folder, a .tar, 'DIR/{00000..00009}.tar', "
                             "a '::' list or pipe:COMMAND (docs/corpora.md section 2a)")
    parser.add_argument("--shard-index", default=None,
                        help="the shards' key index (default: beside a folder's shards if there, "
                             "else a temporary one; the dataset folder is never written)")
    parser.add_argument("--out", required=True, help="the tokenizer file to write (JSON)")
    parser.add_argument("--vocab-size", type=int, default=8192,
                        help="3 specials + 256 bytes + merges (default 8192)")
    parser.add_argument("--context-length", type=int, default=77,
                        help="tokens per caption, <sot> and <eot> included (default 77, CLIP's)")
    parser.add_argument("--min-frequency", type=int, default=2,
                        help="stop when no pair occurs this often (default 2)")
    parser.add_argument("--keep-case", action="store_true",
                        help="do not lowercase (CLIP lowercases; the default)")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--delimiter", default=None, help="default: sniffed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        captions = (captions_from_csv(args.from_csv, caption_column=args.caption_column,
                                      delimiter=args.delimiter) if args.from_csv
                    else list(captions_from_shards(args.from_shards,
                                                        shard_index=args.shard_index)))
        if not captions:
            raise DataError(f"{args.from_csv or args.from_shards} holds no non-empty caption "
                            "to learn from")
        tokenizer = train_bpe(captions, args.vocab_size, context_length=args.context_length,
                              lowercase=not args.keep_case, min_frequency=args.min_frequency)
        tokenizer.save(args.out)
    except TrainerError as err:
        print(f"train_tokenizer: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), "captions": len(captions),
                      "vocab_size": tokenizer.vocab_size,
                      "context_length": tokenizer.context_length,
                      "seconds": round(time.perf_counter() - start, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
