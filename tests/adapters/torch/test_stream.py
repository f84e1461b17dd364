"""adapters.torch.stream: the plan filter for keyed streams and the worker-aware dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.torch.stream import PlanIterableDataset, collate_samples, filter_plan, worker_split
from scan_core import EpochPlan, ScanStateError, bitset
from scan_core.errors import ScanConfigError, ScanInputError


def plan_dropping(n, dropped, epoch=0):
    dropped = np.asarray(sorted(dropped), dtype=np.int64)
    return EpochPlan(epoch, "mutate", 0.5, n, len(dropped), n - len(dropped), seed=0,
                     drop_bits=bitset.from_ids(dropped, n))


def test_filter_plan_keeps_kept_keys_in_order_and_never_touches_pruned_payloads():
    plan = plan_dropping(6, [1, 4])
    touched = []
    stream = ((f"key{i}", lambda i=i: touched.append(i) or i) for i in range(6))
    out = [(i, load()) for i, load in filter_plan(stream, plan, {f"key{i}": i for i in range(6)})]
    assert out == [(0, 0), (2, 2), (3, 3), (5, 5)] and touched == [0, 2, 3, 5]


def test_filter_plan_accepts_ids_or_a_function_and_refuses_unknown_keys():
    plan = plan_dropping(4, [0])
    assert [i for i, _ in filter_plan([(0, "a"), (3, "b")], plan)] == [3]
    assert [i for i, _ in filter_plan([("x", 1)], plan, lambda k: 2)] == [2]
    with pytest.raises(ScanInputError, match="'nope' has no id"):
        list(filter_plan([("nope", 1)], plan, {}))
    with pytest.raises(ScanInputError, match=r"\[0, 4\)"):
        list(filter_plan([(9, 1)], plan))


class RangeSource:
    """Worker w of W serves the kept ids i with i % W == w."""

    def __call__(self, plan, worker_id, num_workers):
        for i in plan.kept_ids[worker_id::num_workers].tolist():
            yield np.full((1, 2, 2), i, np.uint8), np.array([i, 0]), i


def test_dataset_splits_over_dataloader_workers():
    dataset = PlanIterableDataset(RangeSource(), num_workers=2)
    dataset.set_plan(plan_dropping(10, [3, 7]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2,
                                         collate_fn=collate_samples)
    ids = sorted(torch.cat([b[2] for b in loader]).tolist())
    assert ids == [0, 1, 2, 4, 5, 6, 8, 9]


def test_dataset_in_process_and_its_errors():
    assert worker_split() == (0, 1)
    dataset = PlanIterableDataset(RangeSource())
    with pytest.raises(ScanStateError, match="set_plan"):
        iter(dataset)
    dataset.set_plan(plan_dropping(4, [2]))
    images, tokens, ids = collate_samples(list(dataset))
    assert ids.tolist() == [0, 1, 3] and images.shape == (3, 1, 2, 2) and tokens.dtype == torch.long
    wrong = PlanIterableDataset(RangeSource(), num_workers=2)
    wrong.set_plan(plan_dropping(4, [2]))
    with pytest.raises(ScanConfigError, match="runs 1 worker"):
        iter(wrong)
    with pytest.raises(ScanConfigError, match="num_workers"):
        PlanIterableDataset(RangeSource(), num_workers=-1)
