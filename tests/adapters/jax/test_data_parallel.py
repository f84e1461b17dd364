"""Data parallelism over local devices: on two simulated CPU devices, the named-axis losses
under shard_map (gradient taken inside, nothing else) and pmap (gradients pmean'ed), and the
GSPMD path (shard_batch + plain jit) give the one-device loss, per-sample rows and gradient;
the recorder takes a sharded per_sample as it is.

The two-device run is one subprocess (tests/adapters/jax/_two_devices.py, the `two_devices`
fixture of conftest.py) started once per session: XLA's device-count flag must be set before
jax is imported, and this process has imported it with one device.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from adapters.jax import AsyncRecorder, data_mesh, shard_batch  # noqa: E402
from scan_core import ScanConfig, ScanPruner  # noqa: E402
from tests.adapters.jax import _two_devices  # noqa: E402

TOL = dict(rtol=2e-5, atol=2e-6)


def _one_device(parts):
    data = _two_devices.inputs()
    (loss, per_sample), grad = jax.jit(jax.value_and_grad(parts, has_aux=True))(
        data["w"], data["x"], data["y"], data["weights"])
    return np.asarray(loss), np.asarray(per_sample), np.asarray(grad)


@pytest.mark.parametrize("name, parts", [("clip", _two_devices.clip_parts),
                                         ("moco", _two_devices.moco_parts)])
@pytest.mark.parametrize("path", ["shard_map", "pmap", "gspmd"])
def test_two_devices_give_the_one_device_loss_rows_and_gradient(two_devices, name, parts, path):
    assert two_devices["devices"] == 2
    want = _one_device(parts)
    got = two_devices[f"{name}_{path}"]
    for label, g, w in zip(("loss", "per_sample", "gradient"), got, want):
        np.testing.assert_allclose(g, w, **TOL, err_msg=f"{name} {path}: {label}")


@pytest.mark.parametrize("name, parts", [("clip", _two_devices.clip_parts),
                                         ("moco", _two_devices.moco_parts)])
@pytest.mark.parametrize("path", ["padded_shard_map", "padded_gspmd"])
def test_a_padded_batch_on_two_devices_gives_the_real_rows_loss_and_gradient(
        two_devices, name, parts, path):
    """Shards holding 3 and 1 real rows of 4: the loss and gradient of the 4 real rows alone,
    on one device, their per-sample rows in the valid columns and 0 in the padding."""
    data, valid = _two_devices.inputs(), _two_devices.PADDED_VALID
    (loss, per_sample), grad = jax.jit(jax.value_and_grad(parts, has_aux=True))(
        data["w"], data["x"][valid], data["y"][valid], data["weights"][valid])
    got_loss, got_rows, got_grad = two_devices[f"{name}_{path}"]
    np.testing.assert_allclose(got_loss, loss, **TOL, err_msg=f"{name} {path}: loss")
    np.testing.assert_allclose(got_rows[:, valid], per_sample, **TOL,
                               err_msg=f"{name} {path}: per_sample")
    np.testing.assert_array_equal(got_rows[:, ~valid], 0.0)
    np.testing.assert_allclose(got_grad, grad, **TOL, err_msg=f"{name} {path}: gradient")


def test_shard_batch_splits_the_batch_axis_over_both_devices(two_devices):
    spec, shards, per_sample_sharding = two_devices["clip_gspmd_sharding"]
    assert spec == ("data",) and shards == 2
    assert "data" in per_sample_sharding


def test_the_recorder_takes_a_sharded_per_sample(two_devices):
    mean_loss, num_recorded, candidates = two_devices["recorded"]
    data = _two_devices.inputs()
    per_sample = np.asarray(jax.jit(_two_devices.clip_parts)(data["w"], data["x"], data["y"],
                                                             None)[1])
    pruner = ScanPruner(_two_devices.B, 2, ScanConfig(warmup_epochs=0, seed=1))
    pruner.plan_epoch(0)
    pruner.record(np.arange(_two_devices.B), per_sample)
    summary = pruner.end_epoch()
    assert num_recorded == _two_devices.B
    assert mean_loss == pytest.approx(summary.mean_loss, rel=1e-5)
    np.testing.assert_array_equal(candidates, pruner.candidate_ids())


def test_a_batch_that_does_not_split_over_the_devices_is_refused(two_devices):
    assert "cannot be split over 2 local devices" in two_devices["odd_batch_error"]


def test_shard_batch_on_one_device_places_each_argument():
    mesh = data_mesh()
    one = shard_batch(mesh, np.ones((4, 2), np.float32))
    assert isinstance(one, jax.Array) and one.sharding.spec == jax.sharding.PartitionSpec("data")
    pair = shard_batch(mesh, np.ones(4), {"a": np.zeros((4, 3))})
    assert isinstance(pair, tuple) and pair[1]["a"].shape == (4, 3)


def test_shard_batch_needs_a_data_axis():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    with pytest.raises(ValueError, match="axis named 'data'"):
        shard_batch(mesh, np.ones(4))


def test_recorder_on_one_device_matches_a_synchronous_record():
    per_sample = jax.numpy.asarray(np.random.default_rng(0).random((2, 6), dtype=np.float32))
    pruner = ScanPruner(6, 2, ScanConfig(warmup_epochs=0))
    pruner.plan_epoch(0)
    AsyncRecorder(pruner).push(np.arange(6), per_sample)
    assert pruner.log == []  # one step late: nothing recorded yet, and nothing closed
