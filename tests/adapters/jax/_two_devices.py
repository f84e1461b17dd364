"""Run in a fresh interpreter with two simulated CPU devices (test_data_parallel.py starts it):

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m tests.adapters.jax._two_devices OUT

The flag only works before jax is first imported, which the pytest process has already done
with one device, hence the subprocess. Every case is computed from `inputs(seed)`, a pure
function the test process calls too, so it can compute the one-device reference itself. The
results go to OUT as one pickle of numpy arrays and plain values.
"""

from __future__ import annotations

import pickle
import sys

import numpy as np

B, D_IN, D = 8, 6, 4
SCALE, TEMPERATURE = 10.0, 0.3


def inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Host inputs of every case: two (B, D_IN) batches, a (D_IN, D) projection, weights."""
    rng = np.random.default_rng(seed)
    x, y = (rng.standard_normal((B, D_IN)).astype(np.float32) for _ in range(2))
    w = rng.standard_normal((D_IN, D)).astype(np.float32)
    weights = rng.choice([1.0, 2.0], size=B).astype(np.float32)
    return {"x": x, "y": y, "w": w, "weights": weights}


# A padded batch whose two device shards hold different numbers of real rows (3 and 1).
PADDED_VALID = np.array([True, True, True, False, True, False, False, False])


def clip_parts(w, x, y, weights, axis_name=None, valid=None):
    """(loss, per_sample) of CLIP on features x @ w, y @ w (L2-normalised)."""
    import jax.numpy as jnp

    from adapters.jax import clip_loss

    def unit(f):
        return f / jnp.linalg.norm(f, axis=1, keepdims=True)

    out = clip_loss(unit(x @ w), unit(y @ w), SCALE, weights=weights, axis_name=axis_name,
                    valid=valid)
    return out.loss, out.per_sample


def moco_parts(w, x, y, weights, axis_name=None, valid=None):
    """(loss, per_sample) of MoCo with queries x @ w, y @ w and keys derived from them."""
    from adapters.jax import moco_loss

    q1, q2 = x @ w, y @ w
    out = moco_loss(q1, q2, 0.5 * q1 + 1.0, 2.0 * q2, TEMPERATURE, weights=weights,
                    axis_name=axis_name, valid=valid)
    return out.loss, out.per_sample


def run_doc_trainer() -> tuple[int, list]:
    """docs/embedding-jax.md's trainer, unchanged, on both devices: (devices, pruner.log)."""
    import jax

    from tests.adapters.jax import _doc

    _, pruner = _doc.load_trainer()["train"](epochs=2, num_samples=128, batch_size=32)
    return jax.device_count(), pruner.log


def main(out_path: str) -> None:
    import jax
    from jax.sharding import PartitionSpec as P

    from adapters.jax import AsyncRecorder, data_mesh, shard_batch
    from scan_core import ScanConfig, ScanPruner

    assert jax.device_count() == 2, jax.devices()
    mesh = data_mesh()
    data = inputs()
    results: dict = {"devices": jax.device_count()}
    for name, parts in (("clip", clip_parts), ("moco", moco_parts)):
        def per_shard(w, x, y, weights, parts=parts):
            return jax.value_and_grad(lambda w: parts(w, x, y, weights, "data"), has_aux=True)(w)

        step = jax.jit(jax.shard_map(per_shard, mesh=mesh,
                                     in_specs=(P(), P("data"), P("data"), P("data")),
                                     out_specs=((P(), P(None, "data")), P())))
        (loss, per_sample), grad = step(data["w"], data["x"], data["y"], data["weights"])
        results[f"{name}_shard_map"] = (np.asarray(loss), np.asarray(per_sample), np.asarray(grad))

        # pmap: the same named-axis loss; each device's gradient is pmean'ed, as usual.
        def per_device(w, x, y, weights, parts=parts):
            (loss, per_sample), grad = jax.value_and_grad(
                lambda w: parts(w, x, y, weights, "data"), has_aux=True)(w)
            return loss, per_sample, jax.lax.pmean(grad, "data")

        halves = [data[k].reshape(2, B // 2, *data[k].shape[1:]) for k in ("x", "y", "weights")]
        loss, per_sample, grad = jax.pmap(per_device, axis_name="data",
                                          in_axes=(None, 0, 0, 0))(data["w"], *halves)
        results[f"{name}_pmap"] = (np.asarray(loss[0]), np.concatenate(list(per_sample), axis=1),
                                   np.asarray(grad[0]))

        # GSPMD: plain jit on batch-sharded inputs, no axis name.
        x, y, weights = shard_batch(mesh, data["x"], data["y"], data["weights"])
        gspmd = jax.jit(jax.value_and_grad(parts, has_aux=True))
        (loss, per_sample), grad = gspmd(data["w"], x, y, weights)
        results[f"{name}_gspmd"] = (np.asarray(loss), np.asarray(per_sample), np.asarray(grad))
        results[f"{name}_gspmd_sharding"] = (tuple(x.sharding.spec), len(x.addressable_shards),
                                             str(per_sample.sharding))

        # A padded batch (valid mask) both ways: the shards' real-row counts differ.
        def padded_shard(w, x, y, weights, valid, parts=parts):
            return jax.value_and_grad(lambda w: parts(w, x, y, weights, "data", valid),
                                      has_aux=True)(w)

        step = jax.jit(jax.shard_map(padded_shard, mesh=mesh,
                                     in_specs=(P(), P("data"), P("data"), P("data"), P("data")),
                                     out_specs=((P(), P(None, "data")), P())))
        (loss, per_sample), grad = step(data["w"], data["x"], data["y"], data["weights"],
                                        PADDED_VALID)
        results[f"{name}_padded_shard_map"] = (np.asarray(loss), np.asarray(per_sample),
                                               np.asarray(grad))
        x, y, weights, valid = shard_batch(mesh, data["x"], data["y"], data["weights"],
                                           PADDED_VALID)
        padded = jax.jit(jax.value_and_grad(
            lambda w, x, y, weights, valid, parts=parts: parts(w, x, y, weights, None, valid),
            has_aux=True))
        (loss, per_sample), grad = padded(data["w"], x, y, weights, valid)
        results[f"{name}_padded_gspmd"] = (np.asarray(loss), np.asarray(per_sample),
                                           np.asarray(grad))

    # The recorder takes the sharded per_sample of a GSPMD step as it is.
    pruner = ScanPruner(B, 2, ScanConfig(warmup_epochs=0, seed=1))
    pruner.plan_epoch(0)
    recorder = AsyncRecorder(pruner)
    ids = np.arange(B)
    x, y = shard_batch(mesh, data["x"], data["y"])
    recorder.push(ids, jax.jit(clip_parts)(data["w"], x, y, None)[1])
    summary = recorder.end_epoch()
    results["recorded"] = (summary.mean_loss, summary.num_recorded, pruner.candidate_ids())
    try:
        shard_batch(mesh, np.zeros((3, 2), np.float32))
    except ValueError as exc:
        results["odd_batch_error"] = str(exc)
    results["doc_trainer"] = run_doc_trainer()
    with open(out_path, "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
