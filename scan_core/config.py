"""ScanConfig: the frozen, validated description of one pruning run.

Defaults are the authors' CLIP defaults (SPEC.md): rho 0.30 at each end, T_cos 3, warm-up
threshold 0.3. `ScanConfig.moco()` gives their MoCo defaults (0.35 at each end).

>>> cfg = ScanConfig(rho_low=0.30, rho_high=0.30, t_cos=3, warmup_threshold=0.3, seed=0)
>>> cfg.candidate_share
0.6
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, get_args

from scan_core.errors import ScanConfigError

Rule = Literal["scan", "full", "random", "static", "infobatch"]
Mode = Literal["both", "redundant", "ill_matched"]
Scope = Literal["batch", "global"]
GlobalNormalization = Literal["none", "batch"]

#: Names a trainer's `--pruning` flag accepts; "redundant" and "ill" are SCAN with one end only.
RULE_NAMES: tuple[str, ...] = ("scan", "full", "random", "static", "redundant", "ill", "infobatch")


# Fields added after stores existed, with their defaults: a stored config without one of them
# was written before it and used its default (store and state comparisons fill them in).
LATER_FIELDS: dict[str, Any] = {"ill_persistence": 1, "retire_share": 0.0}


def with_later_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config dict with LATER_FIELDS it lacks filled in at their defaults."""
    return {**LATER_FIELDS, **stored}


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """Everything that decides a run's plans. Two runs with equal configs, equal dataset sizes
    and equal loss streams produce identical plans on every machine.

    Attributes:
      rule: "scan" (the paper), or a baseline under the same harness: "full" (never prune),
        "random" (drop as many samples as SCAN would, drawn from all N), "static" (D' frozen
        after the first preparation epoch), "infobatch" (InfoBatch-style, arXiv 2303.04947).
      mode: which candidates SCAN collects: "both" ends, "redundant" (lowest loss) only,
        "ill_matched" (highest loss) only.
      rho_low: share of each batch taken from the low-loss (redundant) end, in [0, 1].
      rho_high: share of each batch taken from the high-loss (ill-matched) end, in [0, 1].
      t_cos: T_cos >= 1, mutation epochs per cycle; a cycle is T_cos + 1 epochs.
      warmup_threshold: T_td >= 0; warm-up ends when the relative drop of the epoch mean loss
        falls below it (SPEC.md: the released code's reading, not the paper's ">=").
      min_warmup_epochs / max_warmup_epochs: bounds on e0, the first pruning epoch.
      warmup_epochs: a fixed e0 that overrides the plateau detector.
      scope: "batch" ranks inside each batch (the paper); "global" ranks over the whole epoch.
      global_normalization: with scope="global", "batch" z-scores each batch's losses per view
        before they are compared across batches.
      global_ema: with scope="global", weight of the previous preparation epoch's losses in an
        exponential moving average (0 = use the current epoch only).
      seed: seeds every random draw (top-up, mutation subset, shuffles).
      num_epochs: the run's length; needed by target_rate, full_tail_epochs and "infobatch".
      target_rate: share of all sample-visits of the run to save; rho_low and rho_high are
        scaled (keeping their ratio) once warm-up ends so the run lands on it, and past the
        cosine cycle's reach a schedule floor raises rho_cur (docs/concepts.md).
      full_tail_epochs: train the last this-many epochs on full data (a variant; 0 = paper).
      ill_every_mutation: a variant: drop all ill-matched candidates in every mutation epoch,
        redundant ones following the cosine schedule.
      ill_persistence: a history-aware option (issue 20): a sample is an ill-matched candidate
        only when it was in the ill-matched end of this many consecutive preparation epochs
        (1 = the paper). Wrong captions stay at the top while hard correct pairs are learned.
      retire_share: a history-aware option (issue 20, rule (c)): at each preparation epoch the
        ill-matched candidates with the highest epoch-wide z-scored loss are retired, dropped
        from every later epoch of the run, until retire_share * N are (0 = the paper).
      infobatch_prune_ratio: InfoBatch's r, the share of below-mean-loss samples dropped.
      infobatch_delta: InfoBatch prunes while epoch < delta * num_epochs (full data after).
    """

    rule: Rule = "scan"
    mode: Mode = "both"
    rho_low: float = 0.30
    rho_high: float = 0.30
    t_cos: int = 3
    warmup_threshold: float = 0.3
    min_warmup_epochs: int = 0
    max_warmup_epochs: int | None = None
    warmup_epochs: int | None = None
    scope: Scope = "batch"
    global_normalization: GlobalNormalization = "none"
    global_ema: float = 0.0
    seed: int = 0
    num_epochs: int | None = None
    target_rate: float | None = None
    full_tail_epochs: int = 0
    ill_every_mutation: bool = False
    ill_persistence: int = 1
    retire_share: float = 0.0
    infobatch_prune_ratio: float = 0.5
    infobatch_delta: float = 0.875

    def __post_init__(self) -> None:
        _check_choice("rule", self.rule, Rule)
        _check_choice("mode", self.mode, Mode)
        _check_choice("scope", self.scope, Scope)
        _check_choice("global_normalization", self.global_normalization, GlobalNormalization)
        _check_real("rho_low", self.rho_low, 0.0, 1.0)
        _check_real("rho_high", self.rho_high, 0.0, 1.0)
        if self.rho_low + self.rho_high > 1.0 + 1e-12:
            raise ScanConfigError(
                f"rho_low + rho_high must be <= 1 (the two ends of a batch cannot overlap), "
                f"got {self.rho_low} + {self.rho_high} = {self.rho_low + self.rho_high}; "
                "lower one of them.")
        _check_int("t_cos", self.t_cos, 1)
        _check_real("warmup_threshold", self.warmup_threshold, 0.0, math.inf)
        _check_int("min_warmup_epochs", self.min_warmup_epochs, 0)
        if self.max_warmup_epochs is not None:
            _check_int("max_warmup_epochs", self.max_warmup_epochs, 0)
            if self.max_warmup_epochs < self.min_warmup_epochs:
                raise ScanConfigError(
                    f"max_warmup_epochs={self.max_warmup_epochs} is below "
                    f"min_warmup_epochs={self.min_warmup_epochs}; make max >= min.")
        if self.warmup_epochs is not None:
            _check_int("warmup_epochs", self.warmup_epochs, 0)
        _check_real("global_ema", self.global_ema, 0.0, 1.0, high_open=True)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        if self.num_epochs is not None:
            _check_int("num_epochs", self.num_epochs, 1)
        _check_int("full_tail_epochs", self.full_tail_epochs, 0)
        _check_real("infobatch_prune_ratio", self.infobatch_prune_ratio, 0.0, 1.0, high_open=True)
        _check_real("infobatch_delta", self.infobatch_delta, 0.0, 1.0)
        if not isinstance(self.ill_every_mutation, bool):
            raise ScanConfigError(
                f"ill_every_mutation must be a bool, got {self.ill_every_mutation!r}.")
        _check_int("ill_persistence", self.ill_persistence, 1)
        if self.ill_persistence > 1 and self.rule not in ("scan", "random"):
            raise ScanConfigError(
                f"ill_persistence={self.ill_persistence} needs a rule that rebuilds D' at every "
                f"preparation epoch (\"scan\" or \"random\"), got rule={self.rule!r}; use "
                "ill_persistence=1 with it.")
        _check_real("retire_share", self.retire_share, 0.0, 1.0, high_open=True)
        if self.retire_share > 0 and self.rule != "scan":
            raise ScanConfigError(
                f"retire_share={self.retire_share} retires SCAN's ill-matched candidates: it "
                f"needs rule=\"scan\", got rule={self.rule!r}; use retire_share=0 with it.")
        needs_epochs = [name for name, on in (
            ("target_rate", self.target_rate is not None),
            ("full_tail_epochs", self.full_tail_epochs > 0),
            ('rule="infobatch"', self.rule == "infobatch")) if on]
        if needs_epochs and self.num_epochs is None:
            raise ScanConfigError(
                f"{', '.join(needs_epochs)} needs the run's length: set num_epochs.")
        if self.num_epochs is not None and self.full_tail_epochs >= self.num_epochs:
            raise ScanConfigError(
                f"full_tail_epochs={self.full_tail_epochs} leaves no epoch to prune in a run of "
                f"num_epochs={self.num_epochs}; use fewer tail epochs.")
        if self.target_rate is not None:
            _check_real("target_rate", self.target_rate, 0.0, 1.0, low_open=True, high_open=True)
            if self.rule not in ("scan", "random", "static"):
                raise ScanConfigError(
                    f"target_rate applies to the SCAN schedule (rules scan, random, static), "
                    f"not to rule={self.rule!r}; unset target_rate.")
            if self.candidate_share <= 0.0:
                raise ScanConfigError(
                    "target_rate scales rho_low and rho_high, which select nothing in this "
                    f"mode ({self.mode!r}, rho_low={self.rho_low}, rho_high={self.rho_high}); "
                    "give the end(s) in use a positive rho.")

    # -- derived values ---------------------------------------------------------------------
    @property
    def candidate_share(self) -> float:
        """Expected |D'| / N (per-batch floors and overlaps aside)."""
        low = self.rho_low if self.mode in ("both", "redundant") else 0.0
        high = self.rho_high if self.mode in ("both", "ill_matched") else 0.0
        return low + high

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `ScanConfig.from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScanConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ScanConfigError(
                f"unknown ScanConfig field(s) {unknown}; known fields are {sorted(known)}.")
        return cls(**data)

    def replace(self, **changes: Any) -> "ScanConfig":
        return dataclasses.replace(self, **changes)

    # -- presets ----------------------------------------------------------------------------
    @classmethod
    def clip(cls, **overrides: Any) -> "ScanConfig":
        """The authors' CLIP defaults: rho 0.30 at each end, T_cos 3, T_td 0.3."""
        return cls(**{"rho_low": 0.30, "rho_high": 0.30, **overrides})

    @classmethod
    def moco(cls, **overrides: Any) -> "ScanConfig":
        """The authors' MoCo v3 defaults: rho 0.35 at each end, T_cos 3, T_td 0.3."""
        return cls(**{"rho_low": 0.35, "rho_high": 0.35, **overrides})

    @classmethod
    def for_rule(cls, name: str, base: "ScanConfig | None" = None, **overrides: Any) -> "ScanConfig":
        """Config for a rule name of RULE_NAMES: "redundant" and "ill" are SCAN with one end.

        >>> ScanConfig.for_rule("ill").mode
        'ill_matched'
        """
        if name not in RULE_NAMES:
            raise ScanConfigError(f"unknown pruning rule {name!r}; choose one of {RULE_NAMES}.")
        base = base if base is not None else cls()
        if name == "redundant":
            changes: dict[str, Any] = {"rule": "scan", "mode": "redundant"}
        elif name == "ill":
            changes = {"rule": "scan", "mode": "ill_matched"}
        else:
            changes = {"rule": name}
        return base.replace(**{**changes, **overrides})


def _check_choice(name: str, value: Any, literal: Any) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        raise ScanConfigError(f"{name} must be one of {allowed}, got {value!r}.")


def _check_real(name: str, value: Any, low: float, high: float, *,
                low_open: bool = False, high_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScanConfigError(f"{name} must be a finite real number, got {value!r}.")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ScanConfigError(f"{name} must lie in {lo}{low}, {high}{hi}, got {value!r}.")


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScanConfigError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high}"
        raise ScanConfigError(f"{name} must be >= {low}{upper}, got {value}.")
