"""Tests of ScanConfig: every validation error names its field; round trips; presets; rules.

Each bad value below is paired with the field name the ScanConfigError message must contain.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scan_core.config import RULE_NAMES, ScanConfig
from scan_core.errors import ScanConfigError, ScanError

NAN, INF = math.nan, math.inf

BAD_FIELDS = [
    # (overrides, field the message must name)
    ({"rule": "bogus"}, "rule"),
    ({"rule": "redundant"}, "rule"),  # a trainer flag name, not a rule: use for_rule()
    ({"mode": "ill"}, "mode"),
    ({"mode": "redundant_only"}, "mode"),
    ({"scope": "epoch"}, "scope"),
    ({"global_normalization": "zscore"}, "global_normalization"),
    ({"rho_low": -0.1}, "rho_low"),
    ({"rho_low": 1.5, "rho_high": 0.0}, "rho_low"),
    ({"rho_low": NAN}, "rho_low"),
    ({"rho_low": "0.3"}, "rho_low"),
    ({"rho_low": True}, "rho_low"),
    ({"rho_high": -1e-9}, "rho_high"),
    ({"rho_high": INF}, "rho_high"),
    ({"rho_high": None}, "rho_high"),
    ({"rho_low": 0.6, "rho_high": 0.5}, "rho_low + rho_high"),
    ({"rho_low": 1.0, "rho_high": 1e-6}, "rho_low + rho_high"),
    ({"t_cos": 0}, "t_cos"),
    ({"t_cos": -2}, "t_cos"),
    ({"t_cos": 2.0}, "t_cos"),
    ({"t_cos": True}, "t_cos"),
    ({"warmup_threshold": -0.01}, "warmup_threshold"),
    ({"warmup_threshold": INF}, "warmup_threshold"),
    ({"warmup_threshold": NAN}, "warmup_threshold"),
    ({"min_warmup_epochs": -1}, "min_warmup_epochs"),
    ({"min_warmup_epochs": 1.0}, "min_warmup_epochs"),
    ({"max_warmup_epochs": -1}, "max_warmup_epochs"),
    ({"min_warmup_epochs": 5, "max_warmup_epochs": 4}, "max_warmup_epochs"),
    ({"warmup_epochs": -1}, "warmup_epochs"),
    ({"warmup_epochs": 2.5}, "warmup_epochs"),
    ({"global_ema": 1.0}, "global_ema"),
    ({"global_ema": -0.1}, "global_ema"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"seed": 1.0}, "seed"),
    ({"num_epochs": 0}, "num_epochs"),
    ({"num_epochs": 10.0}, "num_epochs"),
    ({"full_tail_epochs": -1}, "full_tail_epochs"),
    ({"full_tail_epochs": 2}, "num_epochs"),  # a tail needs the run's length
    ({"full_tail_epochs": 10, "num_epochs": 10}, "full_tail_epochs"),
    ({"full_tail_epochs": 11, "num_epochs": 10}, "full_tail_epochs"),
    ({"infobatch_prune_ratio": 1.0}, "infobatch_prune_ratio"),
    ({"infobatch_prune_ratio": -0.5}, "infobatch_prune_ratio"),
    ({"infobatch_delta": 1.5}, "infobatch_delta"),
    ({"infobatch_delta": -0.1}, "infobatch_delta"),
    ({"ill_every_mutation": 1}, "ill_every_mutation"),
    ({"ill_every_mutation": "yes"}, "ill_every_mutation"),
    ({"rule": "infobatch"}, "num_epochs"),
    ({"target_rate": 0.2}, "target_rate"),
    ({"target_rate": 0.2}, "num_epochs"),
    ({"target_rate": 0.0, "num_epochs": 10}, "target_rate"),
    ({"target_rate": 1.0, "num_epochs": 10}, "target_rate"),
    ({"target_rate": -0.2, "num_epochs": 10}, "target_rate"),
    ({"target_rate": NAN, "num_epochs": 10}, "target_rate"),
    ({"target_rate": 0.2, "num_epochs": 10, "rule": "full"}, "target_rate"),
    ({"target_rate": 0.2, "num_epochs": 10, "rule": "infobatch"}, "target_rate"),
    ({"target_rate": 0.2, "num_epochs": 10, "mode": "redundant", "rho_low": 0.0}, "target_rate"),
    ({"target_rate": 0.2, "num_epochs": 10, "mode": "ill_matched", "rho_high": 0.0},
     "target_rate"),
]


@pytest.mark.parametrize("overrides,field", BAD_FIELDS,
                         ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_FIELDS)])
def test_bad_field_raises_naming_it(overrides, field):
    """Each invalid value raises ScanConfigError (a ScanError and a ValueError) whose message
    names the field."""
    with pytest.raises(ScanConfigError, match=re.escape(field)) as info:
        ScanConfig(**overrides)
    assert isinstance(info.value, ScanError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("overrides,field", BAD_FIELDS[:12],
                         ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_FIELDS[:12])])
def test_bad_field_message_shows_value(overrides, field):
    """The message also shows the value received (repr), so the user sees what was wrong."""
    with pytest.raises(ScanConfigError) as info:
        ScanConfig(**overrides)
    value = overrides[field] if field in overrides else None
    if value is not None:
        assert repr(value) in str(info.value) or str(value) in str(info.value)


unit = st.floats(min_value=0.0, max_value=1.0)


@given(unit, unit)
def test_rho_sum_bound(a, b):
    """rho_low + rho_high <= 1 is accepted; above 1 + 1e-9 it is refused, naming both."""
    if a + b <= 1.0:
        cfg = ScanConfig(rho_low=a, rho_high=b)
        assert cfg.rho_low == a and cfg.rho_high == b
    elif a + b > 1.0 + 1e-9:
        with pytest.raises(ScanConfigError, match=re.escape("rho_low + rho_high")):
            ScanConfig(rho_low=a, rho_high=b)


@given(st.integers(min_value=0, max_value=50), st.integers(min_value=0, max_value=50))
def test_warmup_bounds_order(lo, hi):
    """max_warmup_epochs >= min_warmup_epochs is accepted; below it is refused."""
    if hi >= lo:
        ScanConfig(min_warmup_epochs=lo, max_warmup_epochs=hi)
    else:
        with pytest.raises(ScanConfigError, match="max_warmup_epochs"):
            ScanConfig(min_warmup_epochs=lo, max_warmup_epochs=hi)


@st.composite
def valid_configs(draw):
    """Valid configs, built constructively from the rules of __post_init__."""
    rule = draw(st.sampled_from(["scan", "full", "random", "static", "infobatch"]))
    mode = draw(st.sampled_from(["both", "redundant", "ill_matched"]))
    rho_low = draw(st.floats(min_value=0.01, max_value=0.99))
    rho_high = draw(st.floats(min_value=0.0, max_value=1.0 - rho_low))
    lo = draw(st.integers(min_value=0, max_value=10))
    num_epochs = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=200)))
    if rule == "infobatch" and num_epochs is None:
        num_epochs = 10
    target = None
    if num_epochs is not None and rule in ("scan", "random", "static") and mode != "ill_matched":
        target = draw(st.one_of(st.none(), st.floats(min_value=0.01, max_value=0.99)))
    return ScanConfig(
        rule=rule, mode=mode, rho_low=rho_low, rho_high=rho_high,
        t_cos=draw(st.integers(min_value=1, max_value=20)),
        warmup_threshold=draw(st.floats(min_value=0.0, max_value=5.0)),
        min_warmup_epochs=lo,
        max_warmup_epochs=draw(st.one_of(st.none(), st.integers(min_value=lo, max_value=30))),
        warmup_epochs=draw(st.one_of(st.none(), st.integers(min_value=0, max_value=30))),
        scope=draw(st.sampled_from(["batch", "global"])),
        global_normalization=draw(st.sampled_from(["none", "batch"])),
        global_ema=draw(st.floats(min_value=0.0, max_value=0.99)),
        seed=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        num_epochs=num_epochs, target_rate=target,
        full_tail_epochs=draw(st.integers(0, num_epochs - 1)) if num_epochs else 0,
        ill_every_mutation=draw(st.booleans()),
        infobatch_prune_ratio=draw(st.floats(min_value=0.0, max_value=0.99)),
        infobatch_delta=draw(st.floats(min_value=0.0, max_value=1.0)))


@given(valid_configs())
def test_dict_round_trip(cfg):
    """from_dict(to_dict(cfg)) == cfg, also through JSON."""
    assert ScanConfig.from_dict(cfg.to_dict()) == cfg
    assert ScanConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@given(valid_configs())
def test_to_dict_has_every_field(cfg):
    """to_dict holds exactly the dataclass fields, with their values."""
    d = cfg.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(ScanConfig)}
    assert all(d[k] == getattr(cfg, k) for k in d)


def test_from_dict_rejects_unknown_field():
    """An unknown key raises ScanConfigError naming it."""
    with pytest.raises(ScanConfigError, match="rho_lo"):
        ScanConfig.from_dict({"rho_lo": 0.3})


def test_from_dict_validates():
    """from_dict runs the same validation as the constructor."""
    with pytest.raises(ScanConfigError, match="t_cos"):
        ScanConfig.from_dict({"t_cos": 0})


def test_config_is_frozen():
    """A config cannot be mutated after validation."""
    cfg = ScanConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rho_low = 0.9  # type: ignore[misc]


def test_replace_validates():
    """replace() builds a new validated config."""
    assert ScanConfig().replace(t_cos=5).t_cos == 5
    with pytest.raises(ScanConfigError, match="rho_high"):
        ScanConfig().replace(rho_high=2.0)


def test_defaults_are_the_authors_clip():
    """Defaults: rule scan, mode both, rho 0.30 per end, T_cos 3, T_td 0.3, batch scope."""
    cfg = ScanConfig()
    assert (cfg.rule, cfg.mode, cfg.scope) == ("scan", "both", "batch")
    assert (cfg.rho_low, cfg.rho_high, cfg.t_cos, cfg.warmup_threshold) == (0.30, 0.30, 3, 0.3)
    assert cfg.full_tail_epochs == 0 and cfg.target_rate is None


def test_presets():
    """clip(): 0.30 per end; moco(): 0.35 per end; both T_cos 3, T_td 0.3; overrides apply."""
    clip, moco = ScanConfig.clip(), ScanConfig.moco()
    assert (clip.rho_low, clip.rho_high, clip.t_cos, clip.warmup_threshold) == (0.30, 0.30, 3, 0.3)
    assert (moco.rho_low, moco.rho_high, moco.t_cos, moco.warmup_threshold) == (0.35, 0.35, 3, 0.3)
    assert ScanConfig.moco(t_cos=5, rho_high=0.1).rho_high == 0.1
    assert ScanConfig.moco(t_cos=5).t_cos == 5
    assert ScanConfig.clip(seed=7).seed == 7
    with pytest.raises(ScanConfigError, match="rho_low"):
        ScanConfig.moco(rho_low=0.7)


@pytest.mark.parametrize("mode,share", [("both", 0.5), ("redundant", 0.2), ("ill_matched", 0.3)])
def test_candidate_share(mode, share):
    """candidate_share counts only the ends the mode collects."""
    cfg = ScanConfig(mode=mode, rho_low=0.2, rho_high=0.3)
    assert cfg.candidate_share == pytest.approx(share)


@pytest.mark.parametrize("name,rule,mode", [
    ("redundant", "scan", "redundant"), ("ill", "scan", "ill_matched"),
    ("scan", "scan", "both"), ("full", "full", "both"), ("random", "random", "both"),
    ("static", "static", "both")])
def test_for_rule_maps_names(name, rule, mode):
    """for_rule maps trainer flag names to (rule, mode): "redundant" and "ill" are SCAN with one
    end; the rest are rules of the same name."""
    cfg = ScanConfig.for_rule(name)
    assert (cfg.rule, cfg.mode) == (rule, mode)


def test_for_rule_covers_every_name():
    """Every name of RULE_NAMES gives a valid config (infobatch with num_epochs given)."""
    for name in RULE_NAMES:
        assert isinstance(ScanConfig.for_rule(name, num_epochs=10), ScanConfig)


def test_for_rule_keeps_base_and_overrides():
    """for_rule keeps the base's other fields, and overrides win over the rule's changes."""
    base = ScanConfig.moco(seed=3, t_cos=4)
    cfg = ScanConfig.for_rule("ill", base=base, rho_high=0.2)
    assert (cfg.rule, cfg.mode, cfg.seed, cfg.t_cos) == ("scan", "ill_matched", 3, 4)
    assert (cfg.rho_low, cfg.rho_high) == (0.35, 0.2)
    assert ScanConfig.for_rule("redundant", mode="both").mode == "both"


@pytest.mark.parametrize("name", ["bogus", "SCAN", "ill_matched", ""])
def test_for_rule_rejects_unknown_name(name):
    """An unknown rule name raises ScanConfigError naming it and the allowed names."""
    with pytest.raises(ScanConfigError, match="rule") as info:
        ScanConfig.for_rule(name)
    assert repr(name) in str(info.value) and "redundant" in str(info.value)


def test_for_rule_infobatch_needs_num_epochs():
    """for_rule("infobatch") validates like the constructor: num_epochs is required."""
    with pytest.raises(ScanConfigError, match="num_epochs"):
        ScanConfig.for_rule("infobatch")
