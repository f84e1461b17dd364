"""What a framework adapter supplies to scan_core (ARCHITECTURE.md, the middle floor).

scan_core speaks numpy and one small collective protocol, `scan_core.comm.Communicator`
(all-reduce of a host array by sum / max / bitwise-or, plus rank and world size). A
`FrameworkAdapter` is everything else a training loop in some framework needs to drive it:

- `to_numpy`: host numpy from the framework's arrays, without a needless copy (ids and
  per-sample losses go to `ScanPruner.record` every step);
- `communicator()`: the Communicator over the framework's collectives (torch.distributed,
  JAX multihost), for `ScanPruner(..., communicator=...)`; `rank` / `world_size` are its;
- `num_batches` / `plan_batches`: this rank's id batches of an `EpochPlan`, with
  DistributedSampler's arithmetic under the framework's own shuffle, the same number of
  batches on every rank, known before the epoch starts.

Implemented by `adapters.torch.TorchAdapter`, `adapters.jax.JaxAdapter` and the numpy
`adapters.host.HostAdapter` they build on; tests/adapters/conformance.py is the one suite
every implementation passes. docs/adapters.md says how to write one for another framework.
The per-sample InfoNCE losses are framework code too, but their shapes differ by paradigm
(`clip_loss`, `moco_loss` in each sub-package) rather than by contract. The core never
imports this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from typing_extensions import Protocol, runtime_checkable

from scan_core import EpochPlan
from scan_core.comm import Communicator


@runtime_checkable
class FrameworkAdapter(Protocol):
    """The host-side half of an adapter: conversion, the communicator, a plan's batches."""

    @property
    def rank(self) -> int:
        """This process's rank, the communicator's."""
        ...

    @property
    def world_size(self) -> int:
        """How many ranks train, the communicator's."""
        ...

    def to_numpy(self, array: Any) -> np.ndarray:
        """Host numpy of `array` with its dtype and shape; shares the framework's buffer where
        it lives in host memory (no copy), copies from a device only."""
        ...

    def communicator(self) -> Communicator:
        """The Communicator to hand to ScanPruner (the same object every call)."""
        ...

    def num_batches(self, plan: EpochPlan, batch_size: int, *, drop_last: bool = False) -> int:
        """How many batches `plan_batches` serves on this rank (equal on every rank)."""
        ...

    def plan_batches(self, plan: EpochPlan, batch_size: int, *, seed: int | None = None,
                     shuffle: bool = True, drop_last: bool = False) -> Iterator[np.ndarray]:
        """This rank's int64 id batches of `plan` in training order; `seed` defaults to the
        run's (`plan.seed`). Over all ranks every kept id is served once (plus
        DistributedSampler's padding, or minus its drop_last tail)."""
        ...


__all__ = ["Communicator", "FrameworkAdapter"]
