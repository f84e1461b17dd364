"""Handing per-sample losses to the pruner without stalling the device every step.

JAX dispatches asynchronously: a jitted step returns at once and the device works on while the
host prepares the next batch. Converting the step's `per_sample` to numpy right away would make
the host wait for the step to finish before it could dispatch the next one, so the device would
idle for the host's loading and dispatch time every step. `AsyncRecorder` records late instead:

    step t:   push(ids_t, per_sample_t)  -> starts the device-to-host copy of per_sample_t;
                                            records the earlier pending steps that are already
                                            finished (checked without waiting), and waits
                                            for the oldest only while more than
                                            `max_pending` steps are pending; step t itself
                                            always stays pending until a later push or flush

With the default `max_pending=1` a step is recorded at most one step late: at push t the host
waits, if at all, for step t-1 while step t is queued behind it, so the device never runs dry.
That wait is still a wait: on the CPU backend, where the host's waiting thread shares the cores
with XLA's, it measurably slows the step (benchmarks/bench_jax_overhead.py, docs/benchmarks.md).
`max_pending=None` never waits before `flush()`: each step is recorded at the first push after
it has finished, however far the host runs ahead (a pending step holds only its ids and its
(num_views, B) losses).

At the epoch boundary the last step is still pending: `recorder.end_epoch()` records it and
then calls `pruner.end_epoch()`; the two cannot be separated by mistake. (Calling
`pruner.end_epoch()` directly after `flush()` is equivalent. Calling it with a step still
pending loses that step from the epoch's statistics; the recorder notices at its next
`push` / `flush` / `end_epoch` and raises ScanStateError instead of recording into the wrong
epoch.)

Errors scan_core raises on a bad batch (a NaN or inf loss, a pruned or repeated id) surface
when that step is recorded, at a later `push` or at `flush`, with the offending id in the
message: with the default `max_pending=1`, at the very next push.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

import jax
import numpy as np

from adapters.jax.placement import local_rows
from scan_core import ScanPruner, ScanStateError
from scan_core.errors import ScanInputError
from scan_core.summary import EpochSummary


class _Pending(NamedTuple):
    ids: np.ndarray
    per_sample: Any  # jax.Array, not yet on the host
    epoch: int
    valid: np.ndarray | None  # this process's padding mask (pad_batch), or None


class AsyncRecorder:
    """Records (ids, per_sample) pairs into `pruner` once the device has produced them.

    Args:
      pruner: the run's ScanPruner, with the epoch open (`plan_epoch` called).
      max_pending: the most steps left unrecorded after a push (>= 1: the step just pushed
        is always pending); 1 (default) records every step at the next push, at most one
        step late; None never waits before `flush()` / `end_epoch()`.

    Under several processes or devices, `per_sample` is the step's (num_views, B_global)
    output sharded over its batch axis; each process records the columns it holds
    (`local_rows(per_sample, axis=1)`) with its own ids, the host batch it placed. The pruner
    combines the processes at `end_epoch`.

    >>> import numpy as np, jax.numpy as jnp
    >>> from scan_core import ScanPruner
    >>> pruner = ScanPruner(8); _ = pruner.plan_epoch(0)
    >>> recorder = AsyncRecorder(pruner)
    >>> recorder.push(np.arange(8), jnp.ones((2, 8)))   # recorded at the next push or flush
    >>> recorder.end_epoch().num_recorded
    8
    """

    def __init__(self, pruner: ScanPruner, *, max_pending: int | None = 1) -> None:
        if not isinstance(pruner, ScanPruner):
            raise TypeError(f"AsyncRecorder needs a ScanPruner, got {type(pruner).__name__}.")
        if max_pending is not None and (isinstance(max_pending, bool)
                                        or not isinstance(max_pending, int) or max_pending < 1):
            raise ValueError(f"max_pending must be None or an int >= 1, got {max_pending!r}.")
        self.pruner = pruner
        self.max_pending = max_pending
        self._pending: deque[_Pending] = deque()

    @property
    def pending(self) -> int:
        """How many pushed steps are not recorded yet."""
        return len(self._pending)

    def push(self, ids: Any, per_sample: Any, *, valid: Any = None) -> None:
        """Queue this step's batch; record the pending steps that are finished, and the oldest
        ones regardless while more than `max_pending` are pending.

        ids: (B,) integer ids of this process's batch (host numpy; copied, so the loader may
          reuse its buffer).
        per_sample: (num_views, B) per-sample losses as the jitted step returned them (a
          jax.Array, possibly sharded over the batch axis); not waited for here unless
          `max_pending` says so.
        valid: for a padded batch (`pad_batch`), this process's (B_padded,) bool mask; its True
          columns of `per_sample` are recorded, in order, with `ids` (the real ids only, as
          many as valid has True).
        """
        ids = np.array(ids, copy=True)
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise ScanInputError(f"ids must be a 1-D integer array (B,), got dtype {ids.dtype} "
                                 f"shape {ids.shape}.")
        if valid is not None:
            valid = np.array(valid, copy=True)
            if valid.dtype != np.bool_ or valid.ndim != 1 or int(valid.sum()) != len(ids):
                raise ScanInputError(
                    f"valid must be a 1-D bool mask with one True per id ({len(ids)}), got "
                    f"dtype {valid.dtype} shape {valid.shape} with {int(valid.sum())} True; "
                    "push the real ids and pad_batch's mask.")
        if isinstance(per_sample, jax.Array) and per_sample.is_fully_addressable:
            per_sample.copy_to_host_async()  # the copy overlaps the next step's compute
        self._pending.append(_Pending(ids, per_sample, self._open_epoch(), valid))
        # The newest step always stays pending, ready or not, so that what end_epoch() must
        # flush does not depend on timing.
        limit = self.max_pending
        while len(self._pending) > 1 and ((limit is not None and len(self._pending) > limit)
                                          or _is_ready(self._pending[0].per_sample)):
            self._record(self._pending.popleft())

    def flush(self) -> None:
        """Record every pending step now (waits for them). Call before `pruner.end_epoch()`,
        or call `end_epoch()` here, which does both."""
        while self._pending:
            self._record(self._pending.popleft())

    def end_epoch(self) -> EpochSummary:
        """flush(), then `pruner.end_epoch()`: the epoch's summary."""
        self.flush()
        return self.pruner.end_epoch()

    def _open_epoch(self) -> int:
        # While an epoch is open the pruner's next_epoch is that epoch; end_epoch advances it.
        return self.pruner.next_epoch

    def _record(self, item: _Pending) -> None:
        if item.epoch != self.pruner.next_epoch:
            raise ScanStateError(
                f"a batch of epoch {item.epoch} was still pending in the AsyncRecorder when "
                f"pruner.end_epoch() closed that epoch, so epoch {item.epoch}'s statistics miss "
                "it; close epochs with recorder.end_epoch() (or call recorder.flush() before "
                "pruner.end_epoch()).")
        losses = local_rows(item.per_sample, axis=1)
        if losses.dtype not in (np.float32, np.float64):
            losses = losses.astype(np.float32)  # bfloat16 / float16 from mixed precision
        if item.valid is not None:
            if losses.shape[-1] != item.valid.shape[0]:
                raise ScanInputError(
                    f"per_sample has {losses.shape[-1]} columns on this process but valid has "
                    f"{item.valid.shape[0]} entries; pass the mask of the padded batch this "
                    "process placed.")
            losses = losses[..., item.valid]
        if losses.ndim == 2 and losses.shape[1] != item.ids.shape[0]:
            raise ScanInputError(
                f"per_sample has {losses.shape[1]} columns on this process but {item.ids.shape[0]} "
                "ids were pushed with it; push this process's ids with the step's per_sample "
                "(its own rows: the host batch it placed with shard_batch).")
        self.pruner.record(item.ids, losses)


def _is_ready(array: Any) -> bool:
    """Has the device produced `array`? (Never waits; host arrays are always ready.)"""
    return not isinstance(array, jax.Array) or array.is_ready()
