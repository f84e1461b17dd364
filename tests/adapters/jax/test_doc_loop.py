"""docs/embedding-jax.md's trainer runs as written: it trains, prunes, records every served
sample, follows its LR schedule to the end however much the epochs shrink; the same file runs
data parallel on two (simulated) devices, and as two processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

from tests.adapters.jax import _doc  # noqa: E402

_load_trainer = _doc.load_trainer


def test_the_doc_trainer_trains_prunes_and_records_every_sample(capsys):
    trainer = _load_trainer()
    progress: list[float] = []
    schedule = trainer["learning_rate"]

    def recording_schedule(p, base_lr, **kw):
        progress.append(p)
        return schedule(p, base_lr, **kw)

    pushed: list[int] = []
    recorder_class = trainer["AsyncRecorder"]

    class CountingRecorder(recorder_class):
        def push(self, ids, per_sample):
            pushed.append(len(ids))
            super().push(ids, per_sample)

    trainer["learning_rate"] = recording_schedule
    trainer["AsyncRecorder"] = CountingRecorder
    n, epochs, batch = 1024, 7, 64  # the doc runs 4096, 10, 128: smaller for CI time
    _, pruner = trainer["train"](epochs=epochs, num_samples=n, batch_size=batch)
    log = pruner.log
    assert pruner.next_epoch == epochs and len(log) == epochs
    assert log[3]["mean_loss"] < 0.5 * log[0]["mean_loss"], "the model did not train"
    assert any(r["phase"] == "mutate" and r["num_kept"] < n for r in log), "nothing was pruned"
    assert 0.05 < log[-1]["realised_saving"] < 0.5
    # Every pushed batch was recorded in its own epoch (drop_last drops < one batch).
    assert sum(r["num_recorded"] for r in log) == sum(pushed)
    for r in log:
        assert r["num_kept"] - batch < r["num_recorded"] <= r["num_kept"]
    assert capsys.readouterr().out.count("saved so far") == epochs
    assert progress[0] == 0.0 and all(b > a for a, b in zip(progress, progress[1:]))
    # The schedule's last step sits one step short of the end, however short that epoch was.
    last_steps = log[-1]["num_recorded"] // batch
    assert progress[-1] == pytest.approx((epochs - 1 + (last_steps - 1) / last_steps) / epochs)


def test_the_doc_trainer_runs_the_infobatch_rule_with_its_weights():
    trainer = _load_trainer()
    seen = []
    clip = trainer["clip_loss"]

    def spying_clip_loss(*args, weights=None, **kw):
        seen.append(weights)
        return clip(*args, weights=weights, **kw)

    trainer["clip_loss"] = spying_clip_loss  # traced: sees the weights of each compilation
    _, pruner = trainer["train"](epochs=4, num_samples=1024, rule="infobatch")
    assert pruner.config.rule == "infobatch"
    assert any(r["num_kept"] < 1024 for r in pruner.log), "InfoBatch pruned nothing"
    assert seen and all(w is not None and w.shape == (128,) for w in seen)


def test_the_doc_trainer_runs_data_parallel_on_two_devices(two_devices):
    """The unchanged trainer on two simulated devices (run in the two-device subprocess,
    tests/adapters/jax/_two_devices.py): it shards each batch over both, trains and records.
    Kept to two short epochs for CI; pruning under sharding is test_data_parallel.py's."""
    devices, log = two_devices["doc_trainer"]
    assert devices == 2 and len(log) == 2
    assert all(r["num_recorded"] == 128 for r in log)
    assert log[1]["mean_loss"] < log[0]["mean_loss"]


@pytest.mark.slow  # ~20 s of CPU (two JAX start-ups and compilations): outside `make test`
@pytest.mark.distributed
def test_the_doc_trainer_runs_as_two_processes(tmp_path):
    """The doc's two-process command line, on CPU: jax.distributed on 127.0.0.1, one device
    per process, JaxCommunicator between them (every end_epoch checks that both processes
    hold the same pruner state, so a disagreement fails the run)."""
    script = tmp_path / "train_clip_scan_jax.py"
    script.write_text(_doc.trainer_source())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(_doc.ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    procs = [subprocess.Popen(
        [sys.executable, str(script), "--epochs", "4", "--num-samples", "256", "--batch-size",
         "32", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
         str(i)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    lines = [line for line in outputs[0].splitlines() if line.startswith("epoch ")]
    assert len(lines) == 4, outputs[0][-3000:]
    assert not any(line.startswith("epoch ") for line in outputs[1].splitlines())  # rank 0 prints
    # Kept short for CI: pruning across processes is test_distributed.py's to show.
