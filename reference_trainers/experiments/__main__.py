"""The experiment runner of issue 6 (docs/experiments.md).

    python -m reference_trainers.experiments list
    python -m reference_trainers.experiments run clip-table [--out runs/experiments]
        [--seeds 0 1 2] [--workers K] [--threads T] [--miniature] [--data-dir DIR]
        [--where KEY=VALUE ...]
    python -m reference_trainers.experiments table clip-table [--out ...] [--seeds ...]
        [--where KEY=VALUE ...] [--against VALUE] [--preparations] [--figures]
    python -m reference_trainers.experiments report RUN_DIR [--out DIR]

`run` runs the suite's grid (skipping finished runs, resuming stopped ones), then writes its
table (tables/<suite>.md, .json) and figures (figures/<suite>/). `--miniature` runs each cell
for 2 epochs on a few hundred samples with one seed by default: what CI runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from reference_trainers.experiments.suites import SEEDS, SUITES, select_cells, suite_runs

DEFAULT_OUT = "runs/experiments"


def _grid_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=sorted(SUITES) + ["all"])
    parser.add_argument("--out", default=DEFAULT_OUT, help="grid folder (default %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds (default 0 1 2; a miniature: 0)")
    parser.add_argument("--miniature", action="store_true",
                        help="2-epoch runs on a few hundred samples (CI)")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="only the cells with this value (repeatable; e.g. --where "
                             "'regime=target 70%%' --where rule=scan). run: the sources of "
                             "derived runs come along, and the table written after covers the "
                             "whole suite; table: only these rows")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reference_trainers.experiments",
                                     description="SCAN experiment suites (issue 6).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the suites and their run counts")
    run = sub.add_parser("run", help="run a suite's grid, then write its table and figures")
    _grid_args(run)
    cpus = os.cpu_count() or 1
    run.add_argument("--workers", type=int, default=1,
                     help="parallel runs (0: in this process, one after another)")
    run.add_argument("--threads", type=int, default=max(1, cpus),
                     help="torch threads per run (default: all %(default)s cores; with K "
                          "workers use cores / K)")
    run.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder for every run")
    run.add_argument("--retry-failed", action="store_true", help="re-run failed runs")
    table = sub.add_parser("table", help="print (and write) a suite's table")
    _grid_args(table)
    table.add_argument("--figures", action="store_true", help="draw the figures too")
    table.add_argument("--against", default=None, metavar="VALUE",
                       help="pair every row with this row of its regime instead of the suite's "
                            "reference (e.g. full, or 'random, persistence budget' in beyond)")
    table.add_argument("--preparations", action="store_true",
                       help="also the candidates' recall / precision per preparation epoch")
    report = sub.add_parser("report", help="draw one run directory's figures")
    report.add_argument("run_dir")
    report.add_argument("--out", default=None, help="default RUN_DIR/report")
    return parser


def _suites(name: str) -> list[str]:
    return list(SUITES) if name == "all" else [name]


def _seeds(args) -> tuple[int, ...]:
    return tuple(args.seeds) if args.seeds else ((0,) if args.miniature else SEEDS)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for name, suite in SUITES.items():
            runs = {s.run_id for s in suite_runs(name, SEEDS)}
            print(f"{name:<11} {len(runs):3d} runs at 3 seeds  {suite.title}")
        return 0
    if args.command == "report":
        from reference_trainers.experiments.report import report

        result = report(args.run_dir, args.out)
        for name, fig in result["figures"].items():
            print(f"drew {name}: {fig['file']}")
        for name, why in result["not_drawn"].items():
            print(f"not drawn {name}: {why}")
        return 0
    from reference_trainers.experiments.figures import suite_figures
    from reference_trainers.experiments.tables import write_table

    seeds = _seeds(args)
    if args.command == "run":
        from reference_trainers.experiments.runner import run_grid

        specs = [s for name in _suites(args.suite)
                 for s in suite_runs(name, seeds, miniature=args.miniature)]
        if args.where:
            try:
                specs = select_cells(specs, args.where)
            except ValueError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
        try:
            run_grid(specs, args.out, workers=args.workers, threads=args.threads,
                     data_dir=args.data_dir, retry_failed=args.retry_failed)
        except KeyboardInterrupt:
            print("stopped: run the same command again to resume", file=sys.stderr)
            return 130
    where = args.where if args.command == "table" else None
    extra = ({"against": args.against, "preparations": args.preparations}
             if args.command == "table" else {})
    for name in _suites(args.suite):
        try:
            path, text = write_table(name, args.out, seeds, miniature=args.miniature,
                                     where=where, **extra)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(text)
        print(f"(written to {path})")
        if args.command == "run" or args.figures:
            suite_figures(name, args.out, seeds, miniature=args.miniature)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
