"""The conformance suite (tests/adapters/conformance.py) against TorchAdapter, plus what only
torch has: a tensor that requires grad is still handed over without a copy, and the shuffle
is DistributedSampler's (ScanSampler's)."""

import numpy as np
import pytest
import torch

from adapters.torch import ScanSampler, TorchAdapter
from scan_core import ScanConfig, ScanPruner
from tests.adapters.conformance import *  # noqa: F401,F403 - the suite's tests
from tests.adapters.conformance import AdapterCase


@pytest.fixture(scope="module")
def case():
    return AdapterCase(
        name="torch", make=TorchAdapter, array=torch.from_numpy,
        address=lambda tensor: tensor.data_ptr(),
        dtypes=tuple(np.dtype(d) for d in ("float32", "float64", "int32", "int64", "uint8")))


def test_a_tensor_that_requires_grad_is_handed_over_without_a_copy():
    tensor = torch.arange(6, dtype=torch.float32).requires_grad_()
    out = TorchAdapter().to_numpy(tensor * 1)  # a non-leaf with a grad_fn, as a loss is
    np.testing.assert_array_equal(out, np.arange(6, dtype=np.float32))
    leaf = TorchAdapter().to_numpy(tensor)
    assert leaf.ctypes.data == tensor.data_ptr()


@pytest.mark.parametrize("drop_last", [False, True])
def test_its_batches_are_the_scan_samplers(drop_last):
    pruner = ScanPruner(103, 2, ScanConfig(seed=4))
    sampler = ScanSampler(pruner, drop_last=drop_last)
    sampler.set_epoch(0)
    ours = list(TorchAdapter().plan_batches(sampler.plan, 10, drop_last=drop_last))
    theirs = list(sampler.batches(10, drop_last=drop_last))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_the_docstring_example_runs():
    import doctest

    import adapters.torch.adapter

    assert doctest.testmod(adapters.torch.adapter).failed == 0
