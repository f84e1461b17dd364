"""The plateau detector that ends warm-up (SPEC.md, phase 1).

At the end of epoch e with mean loss L_e: if e > 0 and (L_prev - L_e) / (L_prev + eps) < T_td,
pruning starts at e0 = e + 1; otherwise L_prev = L_e. This is the released code's reading
(warm-up ends when the loss curve flattens); the paper's text writes ">=".
"""

from __future__ import annotations

import dataclasses

from scan_core.config import ScanConfig

EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class WarmupState:
    """prev_loss: L_prev (None before the first epoch ends); e0: the first pruning epoch, or
    None while warm-up goes on."""

    prev_loss: float | None = None
    e0: int | None = None

    @property
    def active(self) -> bool:
        return self.e0 is None


def initial_warmup(config: ScanConfig) -> WarmupState:
    """e0 is known up front with a fixed warmup_epochs, or when max_warmup_epochs is 0."""
    if config.warmup_epochs is not None:
        return WarmupState(e0=config.warmup_epochs)
    if config.max_warmup_epochs == 0:
        return WarmupState(e0=0)
    return WarmupState()


def earliest_e0(config: ScanConfig) -> int:
    """The earliest epoch pruning can start under `config` (the plateau test first runs at the
    end of epoch 1, so e0 >= 2 unless a guard or override says otherwise)."""
    fixed = initial_warmup(config).e0
    if fixed is not None:
        return fixed
    earliest = max(2, config.min_warmup_epochs)
    if config.max_warmup_epochs is not None:
        earliest = min(earliest, config.max_warmup_epochs)
    return earliest


def end_of_epoch(state: WarmupState, epoch: int, mean_loss: float,
                 config: ScanConfig) -> WarmupState:
    """Update the detector with the epoch's global mean loss; returns the new state."""
    if state.e0 is not None:
        return state
    start = epoch + 1
    plateau = (epoch > 0 and state.prev_loss is not None
               and (state.prev_loss - mean_loss) / (state.prev_loss + EPS) < config.warmup_threshold)
    if plateau and start >= config.min_warmup_epochs:
        return WarmupState(prev_loss=state.prev_loss, e0=start)
    if config.max_warmup_epochs is not None and start >= config.max_warmup_epochs:
        return WarmupState(prev_loss=mean_loss, e0=start)
    return WarmupState(prev_loss=mean_loss, e0=None)
