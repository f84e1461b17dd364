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


class PidSource(RangeSource):
    """RangeSource whose samples carry the worker's process id in their token row."""

    def __call__(self, plan, worker_id, num_workers):
        import os

        for image, _, i in super().__call__(plan, worker_id, num_workers):
            yield image, np.array([i, os.getpid()]), i


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_persistent_workers_serve_each_epochs_own_plan_without_restarting(context):
    dataset = PlanIterableDataset(PidSource(), num_workers=2, persistent=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2,
                                         collate_fn=collate_samples, persistent_workers=True,
                                         multiprocessing_context=context)
    pids = set()
    for epoch, dropped in enumerate([[3, 7], [0, 1, 2, 9], [], list(range(1, 12))]):
        plan = plan_dropping(12, dropped, epoch=epoch)
        dataset.set_plan(plan)
        batches = list(loader)
        ids = sorted(torch.cat([b[2] for b in batches]).tolist()) if batches else []
        assert ids == plan.kept_ids.tolist()
        pids |= {int(p) for b in batches for p in b[1][:, 1]}
    assert len(pids) == 2  # the same two worker processes served all four epochs


def test_a_non_persistent_dataset_under_persistent_workers_is_refused_not_stale():
    dataset = PlanIterableDataset(RangeSource(), num_workers=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1,
                                         collate_fn=collate_samples, persistent_workers=True)
    dataset.set_plan(plan_dropping(6, [1]))
    assert len(list(loader)) == 3
    dataset.set_plan(plan_dropping(6, [1, 2, 3]))  # never reaches the running worker
    with pytest.raises(ScanConfigError, match="persistent=True"):
        list(loader)


def test_plans_of_another_size_are_refused_by_a_persistent_dataset():
    dataset = PlanIterableDataset(RangeSource(), num_workers=1, persistent=True)
    dataset.set_plan(plan_dropping(8, [1]))
    with pytest.raises(ScanStateError, match="share num_samples"):
        dataset.set_plan(plan_dropping(8 + 8 * 70000, [1]))
