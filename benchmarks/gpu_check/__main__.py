"""Command line of the GPU check: `python -m benchmarks.gpu_check --out DIR [--dry-run]`."""

from __future__ import annotations

import argparse
import shlex
import sys

from benchmarks.gpu_check import BUDGET_S, DRY_BUDGET_S, PARTS
from benchmarks.gpu_check.runner import run_check


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = [p.name for p in PARTS]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                     description=__doc__)
    parser.add_argument("--out", required=True, help="folder for results.json, results.md, "
                        "gpu_check.log (created)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the same parts on the CPU at tiny shapes (what `make test` runs)")
    parser.add_argument("--parts", nargs="+", choices=names, default=names,
                        help="run only these parts (default: all, in order)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"time box of the whole run (default {BUDGET_S:.0f} s on a GPU, "
                             f"{DRY_BUDGET_S:.0f} s dry)")
    parser.add_argument("--data", default=".gpu-stage",
                        help="staged folder (benchmarks/stage_gpu_check.py): fashion-mnist/ "
                             "IDX files for the trainer run; generated data when absent")
    parser.add_argument("--work", default=None,
                        help="scratch folder for shards, run directories, stores (default "
                             "OUT/work; device.sh puts it outside the folder brought back)")
    args = parser.parse_args(argv)
    budget = args.budget_s if args.budget_s is not None else (
        DRY_BUDGET_S if args.dry_run else BUDGET_S)
    if budget <= 0:
        parser.error(f"--budget-s must be > 0, got {budget}")
    parts = [p for p in PARTS if p.name in args.parts]
    doc = run_check(parts, args.out, dry_run=args.dry_run, budget_s=budget,
                    data_dir=args.data, work_dir=args.work,
                    command="python -m benchmarks.gpu_check " + shlex.join(argv))
    print(open(f"{args.out}/results.md", encoding="utf-8").read())
    failed = [p["name"] for p in doc["parts"] if p["status"] != "ok"]
    if failed:
        print(f"parts not ok: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
