"""SCAN's settings live in the trainer config's `scan` (a ScanConfig), the pruning flags are
derived from ScanConfig's fields, and the flat names of the command line and config.json reach
it (common/config.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reference_trainers.common.config import (PRUNING_FLAGS, SCAN_FLAG_FIELDS, SCAN_SETTINGS,
                                              TrainConfig, build_parser, config_from_args,
                                              with_settings)
from reference_trainers.common.errors import TrainerError
from reference_trainers.common.moco_config import MocoConfig
from scan_core import RULE_NAMES, ScanConfig, ScanConfigError, ScanPruner


def test_plain_runs_keep_the_papers_config_without_a_run_length():
    """No option that needs the run's length: num_epochs stays unset, so a plain run's pruner
    config (and its store fingerprint) is the paper's default plus the trainer's seed."""
    cfg = TrainConfig(epochs=7, seed=3)
    assert cfg.scan == ScanConfig(seed=3)
    assert MocoConfig(epochs=7, seed=3).scan == ScanConfig.moco(seed=3)


@pytest.mark.parametrize("changes", [{"target_rate": 0.5}, {"full_tail_epochs": 2},
                                     {"pruning": "infobatch"},
                                     {"target_rate": 0.7, "t_cos": 5, "scan_warmup_epochs": 1}])
def test_options_that_need_the_run_length_get_the_trainers_epochs(changes):
    cfg = with_settings(TrainConfig(epochs=12), **changes)
    scan = cfg.scan
    assert scan.num_epochs == 12
    for key in ("target_rate", "full_tail_epochs", "t_cos"):
        if key in changes:
            assert getattr(scan, key) == changes[key]
    if "scan_warmup_epochs" in changes:
        assert scan.warmup_epochs == changes["scan_warmup_epochs"]
    ScanPruner(100, 2, scan)  # a reachable target constructs
    # the run's length follows the config's: a later change of epochs reaches the pruner
    assert dataclasses.replace(cfg, epochs=20).scan.num_epochs == 20


def test_target_rate_flag_from_the_command_line():
    args = build_parser("clip").parse_args(["--out", "x", "--target-rate", "0.5",
                                            "--epochs", "12"])
    scan = config_from_args(args).scan
    assert (scan.target_rate, scan.num_epochs) == (0.5, 12)


def test_a_target_for_a_rule_without_a_schedule_is_a_clear_error():
    with pytest.raises(ScanConfigError, match="target_rate"):
        with_settings(TrainConfig(), pruning="full", target_rate=0.3)


@pytest.mark.parametrize("name", RULE_NAMES)
def test_every_pruning_name_round_trips_through_the_config(name):
    cfg = with_settings(TrainConfig(epochs=8), pruning=name)
    assert cfg.pruning == name
    assert cfg.scan == ScanConfig.for_rule(name, ScanConfig(seed=0), num_epochs=cfg.scan.num_epochs)


def test_the_pruning_flags_are_derived_from_scan_configs_fields():
    """One flag per exposed ScanConfig field but the switch --ill-every-mutation, with the
    field's type and its docstring line; each reaches the config's `scan`."""
    by_name = {name: (flag, kind, text) for flag, name, kind, text in PRUNING_FLAGS}
    fields = {f.name for f in dataclasses.fields(ScanConfig)}
    assert set(SCAN_FLAG_FIELDS) <= fields
    assert "--scan-warmup-epochs" == by_name["scan_warmup_epochs"][0]
    assert by_name["t_cos"][1] is int and by_name["rho_low"][1] is float
    assert by_name["max_warmup_epochs"][1] is int          # int | None -> int
    assert "batch, global" in by_name["scope"][2]          # a Literal's choices in the help
    assert "T_cos" in by_name["t_cos"][2]                  # ScanConfig's docstring
    values = {"rho_low": "0.2", "rho_high": "0.25", "t_cos": "4", "warmup_threshold": "0.1",
              "min_warmup_epochs": "1", "max_warmup_epochs": "3", "scan_warmup_epochs": "2",
              "scope": "global", "target_rate": "0.3", "full_tail_epochs": "1",
              "ill_persistence": "2", "retire_share": "0.05"}
    assert set(values) == set(by_name) - {"loss_history"}   # the pruner's, not ScanConfig's
    argv = ["--out", "x", "--epochs", "9", "--ill-every-mutation"]
    for name, value in values.items():
        argv += [by_name[name][0], value]
    scan = config_from_args(build_parser("clip").parse_args(argv)).scan
    assert scan.ill_every_mutation is True
    for name, value in values.items():
        field = "warmup_epochs" if name == "scan_warmup_epochs" else name
        assert getattr(scan, field) == type(getattr(scan, field))(value), name


def test_config_json_keeps_its_flat_names_and_rebuilds_the_same_config():
    """to_dict writes SCAN's settings under the names config.json always had (resume compares
    them with runs of earlier versions); with_settings reads them back to an equal config."""
    cfg = with_settings(TrainConfig(epochs=10, seed=4), pruning="redundant", rho_low=0.2,
                        target_rate=0.3, scan_warmup_epochs=2)
    flat = json.loads(json.dumps(cfg.to_dict()))
    assert "scan" not in flat and set(SCAN_SETTINGS) <= set(flat)
    assert (flat["pruning"], flat["rho_low"], flat["scan_warmup_epochs"]) == ("redundant", 0.2, 2)
    rebuilt = with_settings(TrainConfig(), **flat)
    assert rebuilt == cfg


def test_an_unknown_setting_is_refused_with_the_known_ones():
    with pytest.raises(TrainerError, match="--backbone.*rho_low"):
        with_settings(TrainConfig(), backbone="resnet")
    with pytest.raises(TrainerError, match="scan must be a scan_core.ScanConfig"):
        TrainConfig(scan={"rho_low": 0.2})


def test_moco_crop_min_flag_reaches_the_views_and_is_range_checked():
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


def test_a_run_written_before_the_history_rules_resumes_and_a_changed_rule_is_refused(tmp_path):
    """config.json of a run from before --ill-persistence / --retire-share lacks both keys: a
    resume with their defaults (the paper rule) matches it; asking for another value is refused
    by name, as every other changed setting is."""
    from reference_trainers.common.rundir import RunDir
    from scan_core.config import LATER_FIELDS

    flat = TrainConfig(epochs=4).to_dict()
    assert {k: flat[k] for k in LATER_FIELDS} == LATER_FIELDS
    older = {k: v for k, v in flat.items() if k not in LATER_FIELDS}
    run = RunDir(tmp_path / "run")
    (run.path / "config.json").write_text(json.dumps(older))
    run.write_config(flat, resume=True)                       # the same run: accepted
    (run.path / "config.json").write_text(json.dumps(older))
    with pytest.raises(TrainerError, match="retire_share: run has 0.0, now 0.1"):
        run.write_config({**flat, "retire_share": 0.1}, resume=True)


def test_a_flag_table_gives_flag_field_type_and_a_help_that_runs_over_lines():
    from reference_trainers.common.config import flag_table

    assert flag_table("""
        --num-test      int    evaluation subset
                               size
        --lr-warmup     float  linear warm-up (epochs)
        --data          str
    """) == [("--num-test", "num_test", int, "evaluation subset size"),
             ("--lr-warmup", "lr_warmup", float, "linear warm-up (epochs)"),
             ("--data", "data", str, "")]
    with pytest.raises(TrainerError, match="'--fast  bool  go fast'.*'float', 'int', 'str'"):
        flag_table("--fast  bool  go fast")


def test_every_moco_flag_sets_the_config_field_it_names():
    from reference_trainers.common.moco_config import FLAGS

    fields = {f.name for f in dataclasses.fields(MocoConfig)} | set(SCAN_SETTINGS)
    assert [name for _, name, _, _ in FLAGS if name not in fields] == []
    assert len({flag for flag, _, _, _ in FLAGS}) == len(FLAGS)
