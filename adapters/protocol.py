"""What a framework adapter supplies to scan_core (ARCHITECTURE.md, the middle floor).

scan_core speaks numpy and one small collective protocol, `scan_core.comm.Communicator`
(all-reduce of a host array by sum / max / bitwise-or, plus rank and world size). An adapter
for a framework provides, in its own sub-package:

- a Communicator over the framework's collectives (torch.distributed, JAX multihost);
- a host conversion of its arrays to numpy without a needless copy (`to_numpy`);
- per-sample, per-view InfoNCE losses for CLIP and MoCo from the computation the trainer
  already does, correct under data parallelism (rank offsets into gathered features);
- an index source that serves an `EpochPlan` (a sampler / a host-side batch iterator).

The protocol below is what the reference trainers rely on; the core never imports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from typing_extensions import Protocol, runtime_checkable

from scan_core.comm import Communicator


@runtime_checkable
class FrameworkAdapter(Protocol):
    """The host-side half of an adapter: conversion and the communicator."""

    def to_numpy(self, array: Any) -> np.ndarray: ...

    def communicator(self) -> Communicator: ...


__all__ = ["Communicator", "FrameworkAdapter"]
