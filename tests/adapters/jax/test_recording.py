"""AsyncRecorder: records exactly what a synchronous record would, one step late; a forgotten
flush cannot silently move a batch into the wrong epoch; scan_core's errors still surface."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

from adapters.jax import AsyncRecorder, plan_batches, to_numpy  # noqa: E402
from scan_core import ScanConfig, ScanPruner, ScanStateError  # noqa: E402
from scan_core.errors import ScanInputError  # noqa: E402

N = 240


def _losses(epoch, ids):
    """A deterministic loss stream: (2, B) float32 per batch, a function of (epoch, id)."""
    base = np.sin(ids * 12.9898 + epoch * 78.233) * 0.5 + 1.5 - 0.1 * epoch
    return np.stack([base, base * 0.7 + 0.2]).astype(np.float32)


def _run(epochs, record_batch, end_epoch):
    pruner = ScanPruner(N, 2, ScanConfig(seed=4, min_warmup_epochs=1, max_warmup_epochs=2))
    for epoch in range(epochs):
        plan = pruner.plan_epoch(epoch)
        for ids in plan_batches(plan, 32, drop_last=False):
            record_batch(pruner, ids, _losses(epoch, ids))
        end_epoch(pruner)
    return pruner


@pytest.mark.parametrize("max_pending", [1, 3, None])
def test_async_records_exactly_what_a_synchronous_record_does(max_pending):
    sync = _run(7, lambda p, ids, losses: p.record(ids, losses), lambda p: p.end_epoch())
    recorders = {}

    def push(pruner, ids, losses):
        recorder = recorders.setdefault(id(pruner), AsyncRecorder(pruner, max_pending=max_pending))
        recorder.push(ids, jnp.asarray(losses))
        assert 1 <= recorder.pending <= (max_pending or 10**9)

    async_ = _run(7, push, lambda p: recorders[id(p)].end_epoch())
    assert async_.log == sync.log
    assert any(row["phase"] == "mutate" and row["num_kept"] < N for row in async_.log)
    np.testing.assert_array_equal(async_.candidate_ids(), sync.candidate_ids())


def test_the_previous_step_is_recorded_at_the_next_push():
    pruner = ScanPruner(8, 2, ScanConfig(warmup_epochs=2))
    pruner.plan_epoch(0)
    recorder = AsyncRecorder(pruner)
    recorder.push(np.arange(4), jnp.ones((2, 4)))
    assert recorder.pending == 1  # the newest step stays pending, finished or not
    recorder.push(np.arange(4, 8), jnp.full((2, 4), 3.0))
    assert recorder.pending == 1
    recorder.flush()
    assert recorder.pending == 0
    assert pruner.end_epoch().mean_loss == pytest.approx(2.0)


def test_without_a_bound_finished_steps_are_recorded_and_the_newest_stays_pending():
    pruner = ScanPruner(12, 2, ScanConfig(warmup_epochs=2))
    pruner.plan_epoch(0)
    recorder = AsyncRecorder(pruner, max_pending=None)
    for start in range(0, 12, 4):
        recorder.push(np.arange(start, start + 4), jnp.ones((2, 4)))
        assert recorder.pending >= 1
    assert recorder.end_epoch().num_recorded == 12


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_a_bad_max_pending_is_refused(bad):
    with pytest.raises(ValueError, match="max_pending must be None or an int >= 1"):
        AsyncRecorder(ScanPruner(4), max_pending=bad)


def test_flush_then_pruner_end_epoch_is_equivalent():
    pruner = ScanPruner(8, 2, ScanConfig(warmup_epochs=2))
    pruner.plan_epoch(0)
    recorder = AsyncRecorder(pruner)
    recorder.push(np.arange(8), jnp.ones((2, 8)))
    recorder.flush()
    assert pruner.end_epoch().num_recorded == 8


def test_ending_the_epoch_under_a_pending_batch_raises_at_the_next_push():
    pruner = ScanPruner(8, 2, ScanConfig(warmup_epochs=3))
    pruner.plan_epoch(0)
    recorder = AsyncRecorder(pruner)
    recorder.push(np.arange(4), jnp.ones((2, 4)))
    recorder.push(np.arange(4, 8), jnp.ones((2, 4)))
    pruner.end_epoch()  # wrong: the second batch is still pending
    pruner.plan_epoch(1)
    with pytest.raises(ScanStateError, match="batch of epoch 0 was still pending"):
        recorder.push(np.arange(8), jnp.ones((2, 8)))


def test_flush_after_a_forgotten_pending_batch_raises_too():
    pruner = ScanPruner(8, 2, ScanConfig(warmup_epochs=3))
    pruner.plan_epoch(0)
    recorder = AsyncRecorder(pruner)
    recorder.push(np.arange(4), jnp.ones((2, 4)))
    recorder.push(np.arange(4, 8), jnp.ones((2, 4)))
    pruner.end_epoch()
    with pytest.raises(ScanStateError, match="recorder.end_epoch()"):
        recorder.flush()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_loss_surfaces_one_step_late(bad):
    pruner = ScanPruner(8, 2, ScanConfig(warmup_epochs=2))
    pruner.plan_epoch(0)
    recorder = AsyncRecorder(pruner)
    recorder.push(np.arange(4), jnp.asarray([[1.0, bad, 1.0, 1.0], [1.0] * 4]))
    with pytest.raises(ScanInputError, match="non-finite value .* sample id 1"):
        recorder.push(np.arange(4, 8), jnp.ones((2, 4)))


def test_a_non_finite_loss_in_the_last_batch_surfaces_at_end_epoch():
    pruner = ScanPruner(4, 2, ScanConfig(warmup_epochs=2))
    pruner.plan_epoch(0)
    recorder = AsyncRecorder(pruner)
    recorder.push(np.arange(4), jnp.full((2, 4), jnp.nan))
    with pytest.raises(ScanInputError, match="non-finite"):
        recorder.end_epoch()


def test_low_precision_losses_are_recorded_as_float32():
    pruner = ScanPruner(4, 2, ScanConfig(warmup_epochs=2))
    pruner.plan_epoch(0)
    recorder = AsyncRecorder(pruner)
    recorder.push(np.arange(4), jnp.full((2, 4), 1.5, dtype=jnp.bfloat16))
    assert recorder.end_epoch().mean_loss == pytest.approx(1.5)


def test_ids_and_columns_must_agree():
    pruner = ScanPruner(8, 2)
    pruner.plan_epoch(0)
    recorder = AsyncRecorder(pruner)
    with pytest.raises(ScanInputError, match="1-D integer array"):
        recorder.push(np.arange(4.0), jnp.ones((2, 4)))
    recorder.push(np.arange(3), jnp.ones((2, 4)))
    with pytest.raises(ScanInputError, match="4 columns on this process but 3 ids"):
        recorder.flush()


def test_the_ids_are_copied_so_a_reused_loader_buffer_is_safe():
    pruner = ScanPruner(8, 2, ScanConfig(warmup_epochs=2))
    pruner.plan_epoch(0)
    recorder = AsyncRecorder(pruner)
    buffer = np.arange(4)
    recorder.push(buffer, jnp.ones((2, 4)))
    buffer[:] = np.arange(4, 8)
    recorder.push(buffer, jnp.ones((2, 4)))
    assert recorder.end_epoch().num_recorded == 8  # a repeat would have raised


def test_recorder_needs_a_pruner():
    with pytest.raises(TypeError, match="needs a ScanPruner"):
        AsyncRecorder(object())


def test_to_numpy_returns_host_arrays():
    x = jnp.arange(6.0).reshape(2, 3)
    out = to_numpy(x)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3)
    plain = np.ones(3)
    assert to_numpy(plain) is plain
