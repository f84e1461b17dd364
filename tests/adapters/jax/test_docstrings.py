"""The examples in adapters/jax's docstrings run as written."""

import doctest
import importlib

import pytest

pytest.importorskip("jax")

MODULES = ["adapter", "batching", "distributed", "losses", "placement", "recording"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"adapters.jax.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
