"""The trainers' pruning flags reach the pruner's config: scan_config_of (common/config.py)."""

from __future__ import annotations

import dataclasses

import pytest

from reference_trainers.common.config import TrainConfig, build_parser, config_from_args, \
    scan_config_of
from scan_core import ScanConfig, ScanConfigError, ScanPruner


def test_plain_runs_keep_the_papers_config_without_a_run_length():
    """No option that needs the run's length: num_epochs stays unset, so a plain run's pruner
    config (and its store fingerprint) is the paper's default plus the trainer's seed."""
    cfg = TrainConfig(epochs=7, seed=3)
    assert scan_config_of(cfg) == ScanConfig(seed=3)


@pytest.mark.parametrize("changes", [{"target_rate": 0.5}, {"full_tail_epochs": 2},
                                     {"pruning": "infobatch"},
                                     {"target_rate": 0.7, "t_cos": 5, "scan_warmup_epochs": 1}])
def test_options_that_need_the_run_length_get_the_trainers_epochs(changes):
    cfg = dataclasses.replace(TrainConfig(epochs=12), **changes)
    scan = scan_config_of(cfg)
    assert scan.num_epochs == 12
    for key in ("target_rate", "full_tail_epochs", "t_cos"):
        if key in changes:
            assert getattr(scan, key) == changes[key]
    ScanPruner(100, 2, scan)  # a reachable target constructs


def test_target_rate_flag_from_the_command_line():
    args = build_parser("clip").parse_args(["--out", "x", "--target-rate", "0.5",
                                            "--epochs", "12"])
    scan = scan_config_of(config_from_args(args))
    assert (scan.target_rate, scan.num_epochs) == (0.5, 12)


def test_a_target_for_a_rule_without_a_schedule_is_a_clear_error():
    with pytest.raises(ScanConfigError, match="target_rate"):
        scan_config_of(TrainConfig(pruning="full", target_rate=0.3))


def test_moco_crop_min_flag_reaches_the_views_and_is_range_checked():
    from reference_trainers.common.errors import TrainerError
    from reference_trainers.moco import data as moco_data
    from reference_trainers.common.moco_config import FLAGS, PRESETS

    parser = build_parser("moco", presets=PRESETS, flags=FLAGS, default_preset="cpu-fmnist-moco")
    cfg = config_from_args(parser.parse_args(["--out", "x", "--crop-min", "0.08"]),
                           presets=PRESETS, flags=FLAGS)
    assert cfg.crop_min == 0.08
    assert all(view.scale == (0.08, 1.0) for view in moco_data.moco_views(cfg.crop_min))
    for bad in ("0", "-0.1", "1.5"):
        with pytest.raises(TrainerError, match="crop-min"):
            config_from_args(parser.parse_args(["--out", "x", "--crop-min", bad]),
                             presets=PRESETS, flags=FLAGS)
