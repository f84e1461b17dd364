"""Experiment suites for SCAN (issue 6): a resumable grid runner, tables, figures, reports.

`python -m reference_trainers.experiments list` shows the suites; docs/experiments.md has the
commands. Modules: suites (the grids as data), runner (the worker pool), worker (one run),
derive (second-stage runs), tables, figures, quality (candidate quality), report (one run).
"""
