"""Host-side batching of an EpochPlan for JAX input pipelines.

The arithmetic is framework-free and shared with every adapter (adapters/batching.py:
`num_batches`, `fold_lone_last`, re-exported here); this module adds JAX's shuffle.

A jitted step wants a stream of fixed-size id batches that a host loader turns into arrays.
`plan_batches` yields this rank's batches of one epoch with the arithmetic of PyTorch's
`DistributedSampler` over the plan's kept ids (`EpochPlan.shard`): one shuffle shared by all
ranks, padding by wrapping (or truncation with drop_last), rank stride. `num_batches` says how
many there are before the epoch starts, the same number on every rank.

Invariants (tests/adapters/jax/test_batching.py holds one property test each):
- drop_last=False: over all ranks every kept id is served exactly once, plus the
  `world_size * plan.shard_length(world_size) - num_kept` padding ids DistributedSampler adds
  (wrapped from the front of the shuffle); drop_last=True: no id is served twice.
- No pruned id is ever served; every rank serves `num_batches(...)` batches.
- The order is a pure function of (seed, plan.epoch, kept set, rank, world_size).

`pad_batch` pads a short batch (a pruned epoch's last) to the full batch size with copies of
its own rows and returns the `valid` mask that `clip_loss` / `moco_loss`, flax's BatchNorm and
`AsyncRecorder.push` take, so the step keeps one shape and compiles once per run.

The shuffle is numpy's PCG64 seeded with (seed, epoch) (`scan_core.plan.default_permutation`),
not torch.randperm: JAX has no way to reproduce torch's generator, so a JAX run and a torch
run with the same seed shuffle differently (each is deterministic and rank-consistent).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from adapters.batching import (check_batch_size, check_seed, fold_lone_last, num_batches,
                               serve_batches)
from scan_core import EpochPlan
from scan_core.plan import default_permutation

__all__ = ["fold_lone_last", "num_batches", "pad_batch", "plan_batches", "plan_permutation"]


def plan_permutation(seed: int, epoch: int):
    """The shuffle `plan_batches` uses: n -> numpy PCG64([seed, epoch]).permutation(n)."""
    return functools.partial(default_permutation, int(seed), int(epoch))


def plan_batches(plan: EpochPlan, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int | None = None, shuffle: bool = True,
                 drop_last: bool = False) -> Iterator[np.ndarray]:
    """This rank's int64 id batches of `plan`, in training order.

    batch_size: ids per batch on this rank (the per-process batch; under `shard_batch` it is
      split further over local devices, so make it a multiple of their number).
    rank, world_size: this process and the number of processes, e.g. `jax.process_index()`
      and `jax.process_count()`; must match the pruner's communicator.
    seed: shuffle seed; default the run's seed (`plan.seed`, from ScanConfig.seed), as the
      torch ScanSampler defaults to it.
    shuffle: permute the kept ids (all ranks alike) before sharding.
    drop_last: truncate the shard to a multiple of world_size (DistributedSampler) and drop the
      last partial batch, so every batch has exactly batch_size ids and a jitted step compiles
      once. Without it the shard is padded by wrapping and the last batch may be smaller (one
      more compilation).

    >>> from scan_core import ScanPruner
    >>> plan = ScanPruner(10).plan_epoch(0)
    >>> [len(b) for b in plan_batches(plan, 4, rank=0, world_size=2)]
    [4, 1]
    """
    check_batch_size(batch_size)
    check_seed(seed)
    permutation = plan_permutation(plan.seed if seed is None else seed, plan.epoch)
    return serve_batches(plan, batch_size, rank=rank, world_size=world_size,
                         permutation=permutation, shuffle=shuffle, drop_last=drop_last)


def pad_batch(batch: Mapping[str, Any], size: int) -> tuple[dict[str, Any], np.ndarray]:
    """`batch`'s arrays padded along their first axis to `size` rows, and the (size,) bool mask
    `valid` (True on the real rows, which come first).

    batch: name -> array; every array with a batch axis has the same length n, 1 <= n <= size;
      0-d values (a step's `progress`) pass through unchanged.
    Padding rows are copies of real rows (row i is row i % n), never zeros: a zero image or
    token row can normalise to NaN features, and a NaN anywhere in a matmul's input reaches
    the valid rows' gradients even when the loss masks it out.

    >>> batch, valid = pad_batch({"x": np.arange(3.0), "progress": np.float32(0.5)}, 5)
    >>> batch["x"].tolist(), valid.tolist()
    ([0.0, 1.0, 2.0, 0.0, 1.0], [True, True, True, False, False])
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be an int >= 1 (the full batch size), got {size!r}.")
    lengths = {name: len(value) for name, value in batch.items() if np.ndim(value) > 0}
    if not lengths:
        raise ValueError("pad_batch needs at least one array with a batch axis, got only "
                         f"scalars: {sorted(batch)}.")
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every array of a batch needs the same length, got {lengths}.")
    n = next(iter(lengths.values()))
    if not 1 <= n <= size:
        raise ValueError(f"a batch of {n} rows cannot be padded to {size}: pad_batch takes "
                         f"1 to {size} rows (a longer batch is its own shape; pass a larger size).")
    rows = np.arange(size) % n
    padded = {name: (np.asarray(value)[rows] if name in lengths else value)
              for name, value in batch.items()}
    return padded, np.arange(size) < n
