"""Where arrays live: data-parallel placement of a host batch over devices, and the way back
to host numpy.

The recommended data-parallel path in JAX is GSPMD: one `Mesh` with a batch axis named
`"data"`, the batch placed with `NamedSharding(mesh, P("data"))`, the parameters replicated,
and a plain `jax.jit` step. XLA splits the batch over the devices and inserts the collectives;
the loss functions see the global batch, so CLIP's negatives are global with no code for it.

    mesh = data_mesh()                       # all devices of all processes on axis "data"
    images, tokens = shard_batch(mesh, images, tokens)   # host (B, ...) -> sharded jax.Array

Under several processes each process passes its own host batch (`plan_batches(rank=
jax.process_index(), world_size=jax.process_count())`); `shard_batch` assembles the global
array from every process's part, and `local_rows` takes this process's rows of a result back.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: Any = None) -> Mesh:
    """A 1-D Mesh over `devices` (default: `jax.devices()`, every process's) on axis "data"."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def shard_batch(mesh: Mesh, *arrays: Any) -> Any:
    """Place host batches with their leading (batch) axis split over the mesh's "data" axis.

    mesh: a Mesh with an axis named "data" (other axes, if any, hold replicas).
    arrays: host arrays (or pytrees of them) whose first dimension is this process's batch; it
      must divide evenly over this process's devices on the "data" axis.
    Returns one `jax.Array` (pytree) per argument with `NamedSharding(mesh, P("data"))`: the
    argument itself for one argument, else a tuple. Under several processes the global array's
    batch is the processes' batches concatenated in process order
    (`jax.make_array_from_process_local_data`).

    >>> import numpy as np
    >>> x = shard_batch(data_mesh(), np.zeros((8, 3), np.float32))
    >>> x.shape, tuple(x.sharding.spec)
    ((8, 3), ('data',))
    """
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"shard_batch needs a mesh with an axis named {DATA_AXIS!r}, got axes "
                         f"{mesh.axis_names}; build one with adapters.jax.data_mesh().")
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    local_shards = _local_data_shards(mesh)
    multi_process = jax.process_count() > 1

    def place(x: Any) -> jax.Array:
        shape = np.shape(x)
        if not shape or shape[0] % local_shards:
            raise ValueError(
                f"shard_batch: an array of shape {shape} cannot be split over {local_shards} "
                f"local devices on axis {DATA_AXIS!r}; make the per-process batch a multiple of "
                "it (and use plan_batches(..., drop_last=True) so the last batch is full).")
        if multi_process:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    placed = tuple(jax.tree.map(place, a) for a in arrays)
    return placed[0] if len(placed) == 1 else placed


def local_rows(array: Any, axis: int = 0) -> np.ndarray:
    """This process's part of `array` along its batch `axis`, as host numpy.

    For an array every device of which this process holds (one process, or replicated) it is
    the whole array. Otherwise it is this process's shards along `axis`, in order, each once
    (replicas over other mesh axes dropped): the rows of the host batch this process placed
    with `shard_batch`, so they line up with its ids.
    """
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return np.asarray(array)
    pieces: dict[int, np.ndarray] = {}
    full = array.shape
    for shard in array.addressable_shards:
        index = shard.index
        for dim, part in enumerate(index):
            if dim != axis and (part.start or 0, part.stop if part.stop is not None
                                else full[dim]) != (0, full[dim]):
                raise ValueError(
                    f"local_rows: array of shape {full} is sharded along axis {dim}, not only "
                    f"along the batch axis {axis} ({array.sharding}); gather it first.")
        start = index[axis].start or 0
        if start not in pieces:
            pieces[start] = np.asarray(shard.data)
    return np.concatenate([pieces[k] for k in sorted(pieces)], axis=axis)


def to_numpy(array: Any) -> np.ndarray:
    """Host numpy of a fully addressable array (a jax.Array on this process's devices, or
    anything np.asarray takes); no copy where JAX can hand over its host buffer (CPU).

    An array spread over several processes has no single host value here: take this process's
    rows with `local_rows`, or the whole with `multihost_utils.process_allgather`.
    """
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        raise ValueError(
            f"to_numpy: this {array.shape} array spans several processes ({array.sharding}); "
            "use adapters.jax.local_rows(array, axis) for this process's rows.")
    return np.asarray(array)


@functools.lru_cache(maxsize=16)  # called every step; a mesh never changes
def _local_data_shards(mesh: Mesh) -> int:
    """How many distinct batch slices this process's devices hold on the "data" axis."""
    axis = mesh.axis_names.index(DATA_AXIS)
    here = jax.process_index()
    mine = {i for i, d in np.ndenumerate(mesh.devices) if d.process_index == here}
    return len({i[axis] for i in mine}) or 1
