"""The two-simulated-device subprocess, run once per session for the tests that read it
(test_data_parallel.py, test_doc_loop.py). XLA's device-count flag must be set before jax is
imported, and this pytest process imports jax with one device, hence a fresh interpreter; the
flag goes into that subprocess's environment only."""

import os
import pathlib
import pickle
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def two_devices(tmp_path_factory):
    pytest.importorskip("jax")
    out = tmp_path_factory.mktemp("two_devices") / "results.pkl"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tests.adapters.jax._two_devices", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return pickle.loads(out.read_bytes())
