"""The JAX CLIP trainer's `--workers N` (common/corpora/decode_pool.py): what decoding in N
spawned processes buys, on a shard set written from Fashion-MNIST (`make_shards`).

Two measurements, side by side in one process so that the ratios share the machine's state:

1. samples/s of the JAX trainer's data path alone (CorpusArrays over the shards: a seek and
   read per image, Pillow decode, then the numpy crop-flip and normalisation in this process;
   no model) at 0 and at N workers, in alternating blocks `--rounds` times, at the JAX
   trainer's own image spec (28x28 grayscale) and, with `--image-size`, an RGB size where
   decoding costs more.
2. the JAX CLIP trainer itself (`--framework jax --preset cpu-tiny --train-data DIR`, a
   subprocess per N, `--threads 1`): the mean wall-clock of its epochs after the first (which
   compiles), at 0 and at N workers.

    .venv/bin/python benchmarks/bench_jax_workers.py
    .venv/bin/python benchmarks/bench_jax_workers.py --num-samples 6000 --write-docs
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))  # this checkout's packages
from bench_env import (bench_parser, command_and_machine, machine, publish,  # noqa: E402
                       trainer_rows)


def write_shard_set(out: Path, num_samples: int) -> None:
    from reference_trainers.common.corpora.make_shards import main as make_shards

    argv = ["--from-fashion-mnist", "--out", str(out), "--num-samples", str(num_samples),
            "--samples-per-shard", "1000"]
    if make_shards(argv) != 0:
        raise SystemExit("make_shards failed (see above)")


def pipeline_rate(data, workers: int, batch_size: int) -> float:
    """Samples/s of one full epoch of `data` through a BatchDecoder with `workers` and the
    trainer's augmentation (its first batches, which start the pool, are served untimed)."""
    from reference_trainers.common.corpora.decode_pool import BatchDecoder
    from reference_trainers.jax.augment import normalise, random_crop_flip

    ids = np.random.default_rng(0).permutation(data.num_samples)
    batches = np.array_split(ids, max(1, data.num_samples // batch_size))
    rng = np.random.default_rng(0)
    with BatchDecoder(data, workers) as decoder:
        decoder.start_epoch(batches[:2 * max(1, workers)])  # start the workers, untimed
        for ids in batches[:2 * max(1, workers)]:
            decoder.serve(ids)
        t0 = time.perf_counter()
        decoder.start_epoch(batches)
        for ids in batches:
            _, pixels = decoder.serve(ids)
            normalise(random_crop_flip(pixels, rng))
        return data.num_samples / (time.perf_counter() - t0)


def trainer_epochs(shards: Path, workers: int, epochs: int, batch_size: int) -> list[dict]:
    """The JAX CLIP trainer's metrics rows on the shard set, SCAN's warm-up throughout."""
    return trainer_rows(["-m", "reference_trainers.clip", "--framework", "jax", "--preset",
                         "cpu-tiny", "--train-data", str(shards), "--tokenizer", "word",
                         "--workers", str(workers), "--epochs", str(epochs),
                         "--scan-warmup-epochs", str(epochs), "--batch-size", str(batch_size),
                         "--num-test", "100"])


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, num_samples=4000, batch_size=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating 0 / N blocks")
    parser.add_argument("--image-size", type=int, default=112,
                        help="an RGB size for part 1 beside the trainer's 28x28 (0: none)")
    parser.add_argument("--epochs", type=int, default=3, help="trainer epochs (part 2)")
    args = parser.parse_args(argv)
    from reference_trainers.common.corpora.arrays import CorpusArrays
    from reference_trainers.common.corpora.images import ImageSpec
    from reference_trainers.common.corpora.shards import ShardIndex
    from reference_trainers.common.tokenizer import Tokenizer

    specs = {"28x28 L (the JAX trainer's)": ImageSpec.cpu()}
    if args.image_size:
        specs[f"{args.image_size}x{args.image_size} RGB"] = ImageSpec.gpu(args.image_size)
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        write_shard_set(shards, args.num_samples)
        index = ShardIndex.open(str(shards))
        for name, spec in specs.items():
            data = CorpusArrays.from_shards(index, spec=spec,
                                            tokenizer=Tokenizer(context_length=8))
            for _ in range(args.rounds):
                for workers in (0, args.workers):
                    rate = pipeline_rate(data, workers, args.batch_size)
                    rates.setdefault((name, workers), []).append(rate)
                    print(f"{name}, {workers} workers: {rate:.0f} samples/s", flush=True)
        seconds = {}
        for workers in (0, args.workers):
            rows = trainer_epochs(shards, workers, args.epochs, args.batch_size)
            seconds[workers] = [float(r["seconds"]) for r in rows[1:]]
            print(f"trainer, {workers} workers: {seconds[workers]} s", flush=True)
    load = os.getloadavg()[0]
    command = (f".venv/bin/python benchmarks/bench_jax_workers.py --num-samples "
               f"{args.num_samples} --workers {args.workers} --rounds {args.rounds}")
    block = command_and_machine(command, machine()) + [
        f"Load average at the end: {load:.1f}.", "",
        f"| JAX data path (batch {args.batch_size}) | workers | samples/s per round | median |",
        "|---|---|---|---|"]
    for (name, workers), values in rates.items():
        block.append(f"| {name} | {workers} | {', '.join(f'{v:.0f}' for v in values)} | "
                     f"{np.median(values):.0f} |")
    block += ["", f"JAX CLIP trainer (cpu-tiny, batch {args.batch_size}, --threads 1), seconds "
              f"per epoch after the first of {args.epochs}:", "",
              "| workers | seconds per epoch | mean |", "|---|---|---|"]
    block += [f"| {w} | {', '.join(f'{s:.2f}' for s in v)} | {np.mean(v):.2f} |"
              for w, v in seconds.items()]
    publish("\n".join(block), "bench_jax_workers", write_docs_too=args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
