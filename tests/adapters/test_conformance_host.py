"""The conformance suite (tests/adapters/conformance.py) against HostAdapter, the numpy
reference every framework adapter extends."""

import numpy as np
import pytest

from adapters.host import HostAdapter
from tests.adapters.conformance import *  # noqa: F401,F403 - the suite's tests
from tests.adapters.conformance import AdapterCase


@pytest.fixture(scope="module")
def case():
    return AdapterCase(
        name="numpy", make=HostAdapter, array=lambda host: host,
        address=lambda array: array.ctypes.data,
        dtypes=tuple(np.dtype(d) for d in ("float32", "float64", "int32", "int64", "uint8")))


def test_the_framework_free_modules_run_their_examples_and_import_no_framework():
    import doctest
    import importlib
    import subprocess
    import sys

    names = ["adapters.protocol", "adapters.host", "adapters.batching"]
    for name in names:
        result = doctest.testmod(importlib.import_module(name))
        assert result.failed == 0, name
    probe = (f"import sys\nfor n in {names!r}: __import__(n)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jax')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
