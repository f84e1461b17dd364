"""scan_core's Communicator over JAX's multi-process runtime (`jax.distributed`).

The pruner reduces host arrays at epoch boundaries only: two float64 loss sums, int64 agreement
digests, and the N / 8-byte candidate bitmaps (uint8, reduced by bitwise or). JAX has no
all-reduce of host numpy and, without `jax_enable_x64`, no 64-bit device arrays, so
`JaxCommunicator` moves raw bytes: every process's array, viewed as uint8, is gathered with
`jax.experimental.multihost_utils.process_allgather` and reduced on the host in numpy, in chunks
that bound the gathered copy to `chunk_bytes * process_count` bytes. The bytes are exact
whatever the dtype, so float64 sums and int64 digests survive a 32-bit JAX.

Before the data, a tiny header (shape, dtype and size digest) is gathered, so processes that
disagree on what they reduce raise ScanDistributedError instead of mixing bytes.

With one process it behaves exactly like `scan_core.comm.SingleProcess` (a copy of the input).
"""

from __future__ import annotations

import zlib

import jax
import numpy as np
from jax.experimental import multihost_utils

from scan_core.comm import ReduceOp, reduce_in_rank_order
from scan_core.errors import ScanDistributedError

_DEFAULT_CHUNK_BYTES = 16 << 20


class JaxCommunicator:
    """scan_core's Communicator across the processes of `jax.distributed.initialize()`.

    rank / world_size are `jax.process_index()` / `jax.process_count()`: data parallelism
    *within* a process (its local devices, `shard_batch`) is invisible to the pruner, which
    sees one rank per process recording that process's rows.

    chunk_bytes: the reduction gathers at most this many bytes per process at a time.

    >>> import numpy as np
    >>> JaxCommunicator().all_reduce(np.array([1, 2]), "sum")   # one process: the identity
    array([1, 2])
    """

    def __init__(self, chunk_bytes: int = _DEFAULT_CHUNK_BYTES) -> None:
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be an int >= 1, got {chunk_bytes!r}.")
        self.chunk_bytes = chunk_bytes
        self._rank = jax.process_index()
        self._world = jax.process_count()

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world

    def all_reduce(self, array: np.ndarray, op: ReduceOp) -> np.ndarray:
        """The reduction ("sum", "max", "bor") of every process's `array`; a collective that
        every process must call with the same shape and dtype. The input is not modified."""
        if op not in ("sum", "max", "bor"):
            raise ValueError(f"all_reduce op must be 'sum', 'max' or 'bor', got {op!r}")
        array = np.ascontiguousarray(array)
        if self._world == 1:
            return np.array(array, copy=True)
        self._check_same_everywhere(array)
        raw = array.reshape(-1).view(np.uint8)
        out = np.empty_like(raw)
        step = self.chunk_bytes - self.chunk_bytes % array.dtype.itemsize or array.dtype.itemsize
        for start in range(0, raw.size, step):
            chunk = np.asarray(multihost_utils.process_allgather(raw[start:start + step]))
            parts = chunk.reshape(self._world, -1).view(array.dtype)
            out[start:start + step] = reduce_in_rank_order(parts, op).view(np.uint8)
        return out.view(array.dtype).reshape(array.shape)

    def _check_same_everywhere(self, array: np.ndarray) -> None:
        described = f"{array.shape}|{array.dtype.str}".encode()
        header = np.array([zlib.crc32(described) & 0x7FFFFFFF, array.nbytes & 0x7FFFFFFF,
                           array.nbytes >> 31], dtype=np.int32)
        headers = np.asarray(multihost_utils.process_allgather(header)).reshape(self._world, 3)
        if (headers != headers[0]).any():
            raise ScanDistributedError(
                f"processes called all_reduce with different arrays: process {self._rank} has "
                f"shape {array.shape} dtype {array.dtype}, headers {headers.tolist()}; every "
                "process must run the same pruner with the same config.")

