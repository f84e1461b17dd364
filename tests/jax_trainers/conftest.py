"""What the JAX trainer tests share: the small CLIP run's flags and its 5-epoch one-process
run, which test_jax_clip_train.py checks and test_jax_processes.py compares two processes with
(one run for both saves a minute of CPU)."""

import pytest

CLIP_ARGS = ["--framework", "jax", "--preset", "cpu-tiny", "--num-train", "768", "--num-test",
             "300", "--batch-size", "64", "--scan-warmup-epochs", "1", "--eval-every", "0",
             "--threads", "1", "--quiet"]


@pytest.fixture(scope="session")
def clip_one_process_run(tmp_path_factory):
    """CLIP_ARGS for 5 epochs in this process: the run directory."""
    from reference_trainers.jax import clip as jax_clip

    out = tmp_path_factory.mktemp("jax-clip")
    assert jax_clip.main(CLIP_ARGS + ["--epochs", "5", "--out", str(out)]) == 0
    return out
