"""Checkpoints of the JAX trainers: one `.npz` file per epoch in the run's checkpoints/.

    checkpoints/epoch_00000007.npz        (and epoch_00000007.npz.crc32: its size and CRC-32)
      leaf_00000 ... leaf_NNNNN   every array of the TrainState pytree (params, batch_stats,
                                  optax state, momentum encoder), in jax.tree leaf order
      paths                       the leaves' key paths (JSON list), checked on load
      epoch, wall_seconds         the last completed epoch and the wall-clock so far
      rng_state                   the augmentation generator's numpy bit-generator state (JSON)

Why npz rather than orbax: a checkpoint here is a few MB that one process writes between
epochs. A single file written to a temporary name and renamed into place
(`RunDir.write_checkpoint`, as the PyTorch trainers do) is atomic, keeps the run directory's
layout and its two-newest rule, and is readable with numpy alone (no JAX needed to inspect
weights). Orbax's asynchronous, multi-file, multi-host checkpointing answers problems these
CPU presets do not have.

Loading fills a template state (a freshly initialised one of the same config) leaf by leaf and
refuses a file whose key paths, shapes or dtypes differ, naming the first mismatch.
"""

from __future__ import annotations

import io
import json
from typing import Any

import jax
import numpy as np

from reference_trainers.common.errors import CheckpointError, TrainerError
from reference_trainers.common.resume import resume_point
from reference_trainers.common.rundir import RunDir

__all__ = ["load_checkpoint", "save_checkpoint"]

SUFFIX = "npz"


def _paths(state: Any) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in
            jax.tree_util.tree_flatten_with_path(state)[0]]


def save_checkpoint(run: RunDir, epoch: int, state: Any, rng: np.random.Generator,
                    wall: float) -> None:
    """Write `state` (any pytree of arrays), the generator state, epoch and wall-clock, with a
    checksum file beside it (RunDir.write_checkpoint)."""
    leaves = jax.device_get(jax.tree.leaves(state))
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, paths=json.dumps(_paths(state)), epoch=epoch,
             wall_seconds=wall, rng_state=json.dumps(rng.bit_generator.state))
    run.write_checkpoint(epoch, buffer.getvalue(), SUFFIX)


def load_checkpoint(run: RunDir, template: Any,
                    rng: np.random.Generator) -> tuple[Any, int, float]:
    """(state, last completed epoch, wall seconds so far) from the newest checkpoint that
    verifies and has a store snapshot of its epoch (common/resume.py), with `rng` set to the
    saved generator state; (template, -1, 0.0) when there is nothing to resume. The returned
    state holds host numpy leaves (place it on devices afterwards)."""
    latest = run.latest_checkpoint()
    if latest is not None and latest[1].suffix != "." + SUFFIX:
        raise TrainerError(f"{latest[1]} is not a JAX checkpoint (.{SUFFIX}); this run directory "
                           "was written by the PyTorch trainer: resume it with --framework torch")
    point = resume_point(run, SUFFIX)
    if point.payload is None:
        return template, -1, 0.0
    try:
        data = np.load(io.BytesIO(point.payload), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"cannot read {point.path} ({exc}); delete it to fall back to the "
                              "checkpoint before.") from exc
    with data:
        saved_paths = json.loads(str(data["paths"]))
        expected_paths = _paths(template)
        if saved_paths != expected_paths:
            diff = next((f"{a} != {b}" for a, b in zip(saved_paths, expected_paths) if a != b),
                        f"{len(saved_paths)} leaves != {len(expected_paths)}")
            raise TrainerError(f"{point.path} holds another model or optimiser ({diff}); resume "
                               "with the run's own flags")
        leaves, treedef = jax.tree_util.tree_flatten(template)
        loaded = []
        for i, (path, leaf) in enumerate(zip(expected_paths, leaves)):
            array = data[f"leaf_{i:05d}"]
            if array.shape != np.shape(leaf) or array.dtype != np.asarray(leaf).dtype:
                raise TrainerError(f"{point.path}: {path} is {array.dtype}{array.shape}, the "
                                   f"model needs {np.asarray(leaf).dtype}{np.shape(leaf)}; "
                                   "resume with the run's own flags")
            loaded.append(array)
        rng.bit_generator.state = json.loads(str(data["rng_state"]))
        return (jax.tree_util.tree_unflatten(treedef, loaded), int(data["epoch"]),
                float(data["wall_seconds"]))
