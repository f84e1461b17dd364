"""Write webdataset-style tar shards from a CSV, a folder, or Fashion-MNIST, then index them.

    python -m reference_trainers.common.corpora.make_shards --from-csv pairs.csv --out shards/
    python -m reference_trainers.common.corpora.make_shards --from-folder photos/ --out shards/
    python -m reference_trainers.common.corpora.make_shards --from-fashion-mnist --out shards/ \\
        --num-samples 2000
    python -m reference_trainers.common.corpora.make_shards --from-folder imagenet/train \\
        --no-captions --out shards/                                  # image-only, for MoCo

Each sample becomes `KEY.<ext>` (the image's bytes as they are, not re-encoded) and `KEY.txt`
(UTF-8 caption), consecutive in `shard-000000.tar`, `shard-000001.tar`, ...; the tars are
written reproducibly (mtime 0, owner 0) and end with `scan-index.npz` (shards.ShardIndex).
Keys: a CSV row's number, zero-padded ("000000042"), so a shard sample names the CSV row it
came from; a folder image's relative path without its extension, dots replaced by "_"
("tops/red_shirt"); a Fashion-MNIST training image's index ("fmnist-000042"). Rows without a
caption or file (and, with --verify, images Pillow cannot decode) are left out and listed.
With --no-captions the shards are image-only (no .txt members; captions are neither needed
nor read), which is what the MoCo trainer takes; a folder image's key starts with its class
folder ("n01440764/n01440764_10026"). The tool prints one JSON line: shards, samples, skipped
{key: reason}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import sys
import tarfile
from collections.abc import Iterable, Iterator, Sequence

from reference_trainers.common.corpora.csv_corpus import (BadSampleError, CsvCorpus, ImageSpec,
                                                          decode_image, require_pillow)
from reference_trainers.common.corpora.shards import IMAGE_EXTENSIONS, INDEX_NAME, ShardIndex
from reference_trainers.common.errors import DataError, TrainerError

Sample = tuple[str, bytes, str, str]  # key, image bytes, image extension, caption


def _extension(path: str) -> str:
    ext = pathlib.Path(path).suffix.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def samples_from_csv(path: str | os.PathLike, skipped: dict[str, str], *,
                     image_column: str = "image", caption_column: str = "caption",
                     delimiter: str | None = None, captions: bool = True) -> Iterator[Sample]:
    """(key, bytes, ext, caption) per good CSV row; bad rows go to `skipped`. The CSV is read
    (and a bad file refused) at the call, before anything is written. captions=False: no
    caption column is needed and every caption is ""."""
    corpus = CsvCorpus(path, spec=ImageSpec.cpu(), tokenizer=None,
                       image_column=image_column,
                       caption_column=caption_column if captions else None,
                       delimiter=delimiter)
    return _csv_rows(corpus, skipped)


def _csv_rows(corpus: CsvCorpus, skipped: dict[str, str]) -> Iterator[Sample]:
    width = max(9, len(str(len(corpus))))
    for i in range(len(corpus)):
        key = f"{i:0{width}d}"
        if i in corpus.skipped:
            skipped[key] = corpus.skipped[i]
            continue
        ext = _extension(corpus.paths[i])
        if ext not in IMAGE_EXTENSIONS:
            skipped[key] = f"extension {ext!r} is not one of {IMAGE_EXTENSIONS}"
            continue
        caption = corpus.captions[i] if corpus.captions is not None else ""
        yield key, pathlib.Path(corpus.paths[i]).read_bytes(), ext, caption


def samples_from_folder(folder: str | os.PathLike, skipped: dict[str, str], *,
                        captions: bool = True) -> Iterator[Sample]:
    """Every image under `folder` (sorted) with its sidecar caption IMAGE_STEM.txt; with
    captions=False every image, caption "" (sidecars are ignored)."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise DataError(f"--from-folder {folder}: not a folder")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ext = _extension(str(path))
        if ext not in IMAGE_EXTENSIONS:
            continue
        relative = path.relative_to(folder).with_suffix("")
        key = relative.as_posix().replace(".", "_")
        if not captions:
            yield key, path.read_bytes(), ext, ""
            continue
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        if not caption:
            skipped[key] = "no caption file" if not sidecar.is_file() else "empty caption"
            continue
        yield key, path.read_bytes(), ext, caption


def samples_from_fashion_mnist(data_dir: str | None, num_samples: int, seed: int, *,
                               captions: bool = True) -> Iterator[Sample]:
    """The first num_samples training images as PNG with the trainers' generated captions
    (captions "" with captions=False)."""
    from reference_trainers.common.captions import make_captions
    from reference_trainers.common.data import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist

    image_module = require_pillow()
    splits = load_fashion_mnist(data_dir or DEFAULT_FASHION_MNIST_DIR)
    images = splits.train_images[:num_samples]
    captions = make_captions(images, splits.train_labels[:num_samples], seed=seed)
    for i, (pixels, caption) in enumerate(zip(images, captions.texts)):
        buffer = io.BytesIO()
        image_module.fromarray(pixels, mode="L").save(buffer, format="PNG")
        yield f"fmnist-{i:06d}", buffer.getvalue(), "png", caption if captions else ""


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(samples: Iterable[Sample], out: str | os.PathLike, *,
                 samples_per_shard: int = 1000, prefix: str = "shard",
                 verify: bool = False, skipped: dict[str, str] | None = None,
                 captions: bool = True) -> ShardIndex:
    """Write `samples` into tars of `samples_per_shard`, index them, return the index.

    verify: decode every image with Pillow first and leave out those that fail (in `skipped`).
    captions=False: image-only shards, no KEY.txt members.
    """
    if samples_per_shard < 1:
        raise DataError(f"samples_per_shard={samples_per_shard} must be >= 1")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.tar")):
        raise DataError(f"{out} already holds .tar files: write shards into an empty folder")
    skipped = {} if skipped is None else skipped
    tar, count, shard = None, 0, 0
    try:
        for key, data, ext, caption in samples:
            if verify:
                try:
                    decode_image(data, ImageSpec.cpu())
                except BadSampleError as err:
                    skipped[key] = str(err)
                    continue
            if tar is None or count == samples_per_shard:
                if tar is not None:
                    tar.close()
                    shard += 1
                tar = tarfile.open(out / f"{prefix}-{shard:06d}.tar", "w",
                                   format=tarfile.USTAR_FORMAT)
                count = 0
            _add(tar, f"{key}.{ext}", data)
            if captions:
                _add(tar, f"{key}.txt", caption.encode("utf-8"))
            count += 1
    finally:
        if tar is not None:
            tar.close()
    (out / INDEX_NAME).unlink(missing_ok=True)
    return ShardIndex.build(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference_trainers.common.corpora.make_shards",
        description="Turn a CSV of (image, caption), a folder of images with .txt captions, or "
                    "Fashion-MNIST into webdataset-style tar shards with a SCAN key index.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-csv", metavar="FILE", help="CSV / TSV with a header row")
    source.add_argument("--from-folder", metavar="DIR", help="images with sidecar .txt files")
    source.add_argument("--from-fashion-mnist", action="store_true", help="a demo shard set")
    parser.add_argument("--out", required=True, help="empty folder for the shards")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--delimiter", default=None, help="default: sniffed")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    parser.add_argument("--num-samples", type=int, default=2000, help="Fashion-MNIST images")
    parser.add_argument("--seed", type=int, default=0, help="Fashion-MNIST caption seed")
    parser.add_argument("--no-captions", action="store_true",
                        help="image-only shards (for MoCo): no captions needed, no .txt written")
    parser.add_argument("--verify", action="store_true",
                        help="decode every image and leave out those Pillow cannot read")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    skipped: dict[str, str] = {}
    captions = not args.no_captions
    try:
        if args.from_csv:
            samples = samples_from_csv(args.from_csv, skipped, image_column=args.image_column,
                                       caption_column=args.caption_column,
                                       delimiter=args.delimiter, captions=captions)
        elif args.from_folder:
            samples = samples_from_folder(args.from_folder, skipped, captions=captions)
        else:
            samples = samples_from_fashion_mnist(args.data_dir, args.num_samples, args.seed,
                                                 captions=captions)
        index = write_shards(samples, args.out, samples_per_shard=args.samples_per_shard,
                             verify=args.verify, skipped=skipped, captions=captions)
    except TrainerError as err:
        print(f"make_shards: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), "shards": len(index.shard_names),
                      "samples": len(index), "skipped": skipped}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
