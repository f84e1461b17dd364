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
import csv
import io
import json
import os
import pathlib
import sys
import time
from collections.abc import Iterator, Sequence

from reference_trainers.common.corpora.csv_corpus import _sniff_delimiter
from reference_trainers.common.corpora.shards import ShardIndex
from reference_trainers.common.errors import DataError, TrainerError
from reference_trainers.common.tokenizer_bpe import train_bpe


def captions_from_csv(path: str | os.PathLike, *, caption_column: str = "caption",
                      delimiter: str | None = None) -> list[str]:
    """The non-empty captions of a CSV / TSV (the header names the columns)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read corpus file {path}: {err}") from err
    delimiter = delimiter or _sniff_delimiter(path, text[:65536])
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if caption_column not in (reader.fieldnames or ()):
        raise DataError(f"{path} has columns {reader.fieldnames} (delimiter {delimiter!r}); it "
                        f"lacks {caption_column!r}: pass --caption-column with the header's name")
    return [c for c in ((row.get(caption_column) or "").strip() for row in reader) if c]


def captions_from_shards(directory: str | os.PathLike) -> Iterator[str]:
    """The non-empty .txt members of a shard folder, in id order (the index is built or reused)."""
    index = ShardIndex.open(directory)
    handle, open_shard = None, -1
    try:
        for sample_id in range(len(index)):
            if index.text_size[sample_id] <= 0:
                continue
            shard = int(index.shard[sample_id])
            if shard != open_shard:
                if handle is not None:
                    handle.close()
                handle = open(index.shard_urls[shard], "rb")
                open_shard = shard
            handle.seek(int(index.text_offset[sample_id]))
            text = handle.read(int(index.text_size[sample_id])).decode("utf-8", "replace").strip()
            if text:
                yield text
    finally:
        if handle is not None:
            handle.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference_trainers.common.corpora.train_tokenizer",
        description="Train a byte-level BPE tokenizer on the captions of a CSV or of tar shards.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-csv", metavar="FILE", help="CSV / TSV with a header row")
    source.add_argument("--from-shards", metavar="DIR", help="folder of webdataset-style tars")
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
                    else list(captions_from_shards(args.from_shards)))
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
