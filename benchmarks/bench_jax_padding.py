"""What padding a pruned epoch's last batch saves the JAX trainers: seconds per epoch of the JAX
CLIP and MoCo trainers with the short last batch padded to the batch size (the default:
`runtime.run_epoch(pad_to=...)`, one compiled step for every pruned epoch) and, side by side in
the same process tree, without (`pad_to=None`, what the trainers did before: every pruned epoch
whose last batch has a new length compiles the step again).

Each arm is its own subprocess (`--threads 1`), in alternating order `--rounds` times; the
unpadded arm wraps the trainer's `run_epoch` to drop `pad_to`, nothing else differs. The run
prunes hard and often so that most epochs are pruned: `--epochs 8 --scan-warmup-epochs 1
--t-cos 2 --rho-low 0.45 --rho-high 0.45`.

    .venv/bin/python benchmarks/bench_jax_padding.py
    .venv/bin/python benchmarks/bench_jax_padding.py --rounds 2 --write-docs
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))  # this checkout's packages
from bench_env import (bench_parser, command_and_machine, machine, publish,  # noqa: E402
                       trainer_rows)

TRAINERS = {"CLIP": ("reference_trainers.jax.clip", "cpu-tiny"),
            "MoCo v3": ("reference_trainers.jax.moco", "cpu-tiny-moco")}

# Run in the subprocess: the trainer's main, its run_epoch wrapped to drop pad_to if asked.
_CHILD = """
import sys, importlib
module = importlib.import_module(sys.argv[1])
if sys.argv[2] == "unpadded":
    module.run_epoch = lambda *a, _run=module.run_epoch, **k: _run(*a, **{**k, "pad_to": None})
sys.exit(module.main(sys.argv[3:]))
"""


def epochs_of(module: str, preset: str, arm: str, args) -> list[dict]:
    """The metrics rows of one run of `module` (a JAX trainer) in a subprocess."""
    return trainer_rows(["-c", _CHILD, module, arm, "--framework", "jax", "--preset", preset,
                         "--num-train", str(args.num_samples), "--num-test", "200",
                         "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
                         "--scan-warmup-epochs", "1", "--t-cos", "2", "--rho-low", "0.45",
                         "--rho-high", "0.45"])


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, num_samples=2048, batch_size=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="alternating arm order")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    args = parser.parse_args(argv)
    results: dict[tuple[str, str], list[list[dict]]] = {}
    for r in range(args.rounds):
        for name in args.trainers:
            module, preset = TRAINERS[name]
            arms = ("padded", "unpadded") if r % 2 == 0 else ("unpadded", "padded")
            for arm in arms:
                rows = epochs_of(module, preset, arm, args)
                results.setdefault((name, arm), []).append(rows)
                pruned = [r for r in rows[1:] if r["num_kept"] < args.num_samples]
                print(f"{name} {arm}: pruned epochs "
                      f"{[round(float(r['seconds']), 2) for r in pruned]} s", flush=True)
    load = os.getloadavg()[0]
    command = (f".venv/bin/python benchmarks/bench_jax_padding.py --num-samples "
               f"{args.num_samples} --batch-size {args.batch_size} --epochs {args.epochs} "
               f"--rounds {args.rounds} --trainers {' '.join(args.trainers)}")
    block = command_and_machine(command, machine()) + [
        f"Load average at the end: {load:.1f}.", "",
        f"Seconds of each epoch after the first (which compiles the full-batch step), "
        f"{args.num_samples} samples, batch {args.batch_size}, `--threads 1`, {args.rounds} "
        "round(s). In the padded arm the first pruned epoch compiles the padded step, once per "
        "run; in the unpadded arm every pruned epoch whose last batch has a new length "
        "compiles the step again.", "",
        "| trainer | last batch | unpruned epochs, s | pruned epochs, s | pruned epochs, sum s | "
        "all epochs after the first, sum s | unpadded / padded (sums) |",
        "|---|---|---|---|---|---|---|"]
    for name in args.trainers:
        sums = {}
        for arm in ("padded", "unpadded"):
            runs = results[(name, arm)]
            full = [float(r["seconds"]) for rows in runs for r in rows[1:]
                    if r["num_kept"] == args.num_samples]
            pruned = [float(r["seconds"]) for rows in runs for r in rows[1:]
                      if r["num_kept"] < args.num_samples]
            sums[arm] = (sum(pruned), sum(full) + sum(pruned))
            ratio = (f"{sums['unpadded'][0] / sums['padded'][0]:.1f}x pruned, "
                     f"{sums['unpadded'][1] / sums['padded'][1]:.1f}x all"
                     if arm == "unpadded" else "")
            block.append(f"| {name} | {arm} | {', '.join(f'{s:.2f}' for s in full)} | "
                         f"{', '.join(f'{s:.2f}' for s in pruned)} | {sums[arm][0]:.2f} | "
                         f"{sums[arm][1]:.2f} | {ratio} |")
    publish("\n".join(block), "bench_jax_padding", write_docs_too=args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
