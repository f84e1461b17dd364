"""Command line: `python -m scan_core simulate ...` previews a run's pruning on a synthetic
loss stream and prints one row per epoch (phase, rho_cur, |D'|, kept, realised saving).

    python -m scan_core simulate --num-samples 1200000 --epochs 32 --batch-size 1024
"""

from __future__ import annotations

import argparse
import sys

from scan_core.config import RULE_NAMES, ScanConfig
from scan_core.errors import ScanError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scan_core",
                                     description="SCAN data pruning for contrastive pre-training.")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="preview a run's pruning on a synthetic loss stream")
    sim.add_argument("--num-samples", type=int, required=True, help="dataset size N")
    sim.add_argument("--epochs", type=int, required=True)
    sim.add_argument("--batch-size", type=int, required=True, help="per-rank batch size")
    sim.add_argument("--world-size", type=int, default=1, help="simulated data-parallel ranks")
    sim.add_argument("--rule", choices=RULE_NAMES, default="scan")
    sim.add_argument("--preset", choices=("clip", "moco"), default="clip",
                     help="the authors' defaults: clip (rho 0.30) or moco (rho 0.35)")
    sim.add_argument("--mode", choices=("both", "redundant", "ill_matched"))
    sim.add_argument("--rho-low", type=float)
    sim.add_argument("--rho-high", type=float)
    sim.add_argument("--t-cos", type=int)
    sim.add_argument("--warmup-threshold", type=float)
    sim.add_argument("--min-warmup-epochs", type=int)
    sim.add_argument("--max-warmup-epochs", type=int)
    sim.add_argument("--warmup-epochs", type=int, help="fixed warm-up length (overrides T_td)")
    sim.add_argument("--scope", choices=("batch", "global"))
    sim.add_argument("--target-rate", type=float,
                     help="share of all sample-visits to save; rho is solved after warm-up")
    sim.add_argument("--full-tail-epochs", type=int)
    sim.add_argument("--ill-every-mutation", action="store_true", default=None)
    sim.add_argument("--seed", type=int)
    sim.add_argument("--ill-share", type=float, default=0.1,
                     help="share of planted ill-matched samples in the synthetic stream")
    sim.add_argument("--store", help="Zarr store path (resumes if it exists)")
    return parser


def config_from_args(args: argparse.Namespace) -> ScanConfig:
    overrides = {name: getattr(args, name) for name in (
        "mode", "rho_low", "rho_high", "t_cos", "warmup_threshold", "min_warmup_epochs",
        "max_warmup_epochs", "warmup_epochs", "scope", "target_rate", "full_tail_epochs",
        "ill_every_mutation", "seed") if getattr(args, name) is not None}
    base = ScanConfig.moco() if args.preset == "moco" else ScanConfig.clip()
    if args.rule == "infobatch" or "target_rate" in overrides or "full_tail_epochs" in overrides:
        overrides["num_epochs"] = args.epochs
    return ScanConfig.for_rule(args.rule, base, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scan_core.simulate import run_and_print  # after parsing: --help stays instant

    for name in ("num_samples", "epochs", "batch_size", "world_size"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}",
                  file=sys.stderr)
            return 2
    try:
        config = config_from_args(args)
        run_and_print(args.num_samples, args.epochs, args.batch_size, config,
                      world_size=args.world_size, store=args.store, ill_share=args.ill_share)
    except ScanError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
