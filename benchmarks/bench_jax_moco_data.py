"""The JAX MoCo trainer's host batches on a corpus against Fashion-MNIST in memory.

The JAX MoCo trainer makes each batch on the host before its jitted step: ids -> uint8 images
-> two augmented numpy crops (jax/moco.batch_maker). In memory (`--data fmnist`) the images are
an array gather; on a corpus (`--data folder: | shards:`, jax/moco_data.py) they are read and
decoded when the batch is made, in the trainer's process here (`--workers 0`). Side by
side in one process, alternating blocks `--rounds` times, the same Fashion-MNIST images as an
in-memory array, a folder of PNGs and two local tar shards: samples/s of making the batches of
one epoch (no model), and of the decode alone (the crops left out). Whether the step waits for
its data: compare with a JAX MoCo step's samples/s (docs/jax-trainers.md: 256 in 0.17 s here).

    .venv/bin/python benchmarks/bench_jax_moco_data.py
    .venv/bin/python benchmarks/bench_jax_moco_data.py --num-samples 4096 --write-docs
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))  # this checkout's packages
from bench_env import bench_parser, machine, publish  # noqa: E402


def write_sources(folder: Path, images: np.ndarray, labels: np.ndarray) -> tuple[str, str]:
    """A folder tree of PNGs and two tar shards of the same images: their --data values."""
    from PIL import Image

    from reference_trainers.common.corpora import make_shards

    for i, (pixels, label) in enumerate(zip(images, labels)):
        target = folder / "tree" / f"class{label}"
        target.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (target / f"{i:06d}.png").write_bytes(buffer.getvalue())
    shards = folder / "shards"
    per_shard = (len(images) + 1) // 2
    assert make_shards.main(["--from-folder", str(folder / "tree"), "--no-captions",
                             "--samples-per-shard", str(per_shard), "--out", str(shards)]) == 0
    return f"folder:{folder / 'tree'}", f"shards:{shards}/shard-{{000000..000001}}.tar"


def epoch_rate(make, id_batches: list[np.ndarray]) -> float:
    """samples/s of make(ids) over every batch of one epoch."""
    start = time.perf_counter()
    for ids in id_batches:
        make(ids)
    return sum(len(ids) for ids in id_batches) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, num_samples=2048, batch_size=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from reference_trainers.common.corpora.decode_pool import BatchDecoder
    from reference_trainers.common.data import load_fashion_mnist
    from reference_trainers.common.views import CropView, moco_view_pair
    from reference_trainers.jax.moco import batch_maker
    from reference_trainers.jax.moco_data import Images, corpus_images

    splits = load_fashion_mnist()
    images = splits.train_images[:args.num_samples]
    labels = splits.train_labels[:args.num_samples]
    views = moco_view_pair(CropView, 0.2)
    order = np.random.default_rng(args.seed).permutation(args.num_samples)
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = write_sources(Path(tmp), images, labels)
        run = Path(tmp) / "run"
        run.mkdir()
        sources = {"fmnist (in memory)": Images(images, labels, np.full(len(labels), -1)),
                   "folder: (PNG files)": corpus_images(folder),
                   "shards: (2 local tars)": corpus_images(shards, run_path=run)}
        for _ in range(args.rounds):
            for name, data in sources.items():
                decoder = BatchDecoder(data.arrays, 0) if data.batch_mode == "corpus" else None
                make = batch_maker(data, views, np.random.default_rng(args.seed),
                                   decoder=decoder)
                rates.setdefault(f"{name}, batch + two crops", []).append(
                    epoch_rate(make, batches))
                decode = (lambda ids: data.images[data.served_ids(ids)]) \
                    if data.batch_mode == "corpus" else (lambda ids: data.images[ids])
                rates.setdefault(f"{name}, images only", []).append(epoch_rate(decode, batches))
    info = machine()
    lines = [f"Machine: {', '.join(f'{k} {v}' for k, v in info.items())}. Command: "
             f"`.venv/bin/python benchmarks/bench_jax_moco_data.py --num-samples "
             f"{args.num_samples} --batch-size {args.batch_size} --rounds {args.rounds}`.", "",
             f"| host batches of one epoch ({args.num_samples} images, batch {args.batch_size})"
             " | samples/s per round | median |", "|---|---|---|"]
    for name, values in rates.items():
        lines.append(f"| {name} | {', '.join(f'{v:,.0f}' for v in values)} | "
                     f"{np.median(values):,.0f} |")
    publish("\n".join(lines), "bench_jax_moco_data", write_docs_too=args.write_docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
