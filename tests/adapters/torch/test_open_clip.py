"""adapters.torch.open_clip without open_clip: the per-sample CLIP loss against a naive
reference, label caching and rank offsets, the LR step by fractional epoch, and ids carried
from the dataset to the loss. (tests/integration holds the same against open_clip itself.)"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from adapters.torch.open_clip import (ClipLossWithParts, FractionalEpochSchedule, IdBatches,
                                      IdSlot, WithIds, fractional_step)
from scan_core.errors import ScanConfigError, ScanInputError, ScanStateError


def _features(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return img.requires_grad_(), txt.requires_grad_()


def _naive(img, txt, scale, bias=0.0):
    """Row by row, as the paper writes InfoNCE: -log softmax of row i / column i at i."""
    b = img.shape[0]
    rows = torch.zeros(2, b, dtype=img.dtype)
    for i in range(b):
        i2t = torch.stack([scale * img[i] @ txt[j] + bias for j in range(b)])
        t2i = torch.stack([scale * txt[i] @ img[j] + bias for j in range(b)])
        rows[0, i] = torch.logsumexp(i2t, 0) - i2t[i]
        rows[1, i] = torch.logsumexp(t2i, 0) - t2i[i]
    return rows


@given(b=st.integers(1, 24), d=st.integers(1, 12), seed=st.integers(0, 10**6),
       scale=st.floats(1.0, 100.0), bias=st.sampled_from([None, -3.5, 2.0]))
def test_parts_equal_the_naive_per_sample_loss_and_average_to_the_loss(b, d, seed, scale, bias):
    img, txt = _features(b, d, seed)
    loss = ClipLossWithParts()
    out = loss.parts(img, txt, torch.tensor(scale, dtype=torch.float64),
                     None if bias is None else torch.tensor(bias, dtype=torch.float64))
    want = _naive(img.detach(), txt.detach(), scale, 0.0 if bias is None else bias)
    assert out.per_sample.shape == (2, b)
    assert torch.allclose(out.per_sample.detach(), want, rtol=1e-10, atol=1e-10)
    assert math.isclose(out.loss.item(), want.mean().item(), rel_tol=1e-10, abs_tol=1e-12)


def test_forward_returns_the_clip_loss_and_its_gradients_and_hands_the_parts_on():
    img, txt = _features(9, 6, 3)
    scale = torch.tensor(12.0, dtype=torch.float64, requires_grad=True)
    seen = []
    loss = ClipLossWithParts(on_parts=seen.append)
    out = loss(img, txt, scale, output_dict=True)
    assert list(out) == ["contrastive_loss"]
    logits = scale * img @ txt.T
    labels = torch.arange(9)
    standard = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(out["contrastive_loss"], standard, rtol=1e-12)
    for g, w in zip(torch.autograd.grad(out["contrastive_loss"], (img, txt, scale)),
                    torch.autograd.grad(standard, (img, txt, scale))):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-12)
    assert len(seen) == 1 and seen[0].shape == (2, 9) and not seen[0].requires_grad
    assert torch.allclose(seen[0], _naive(img.detach(), txt.detach(), 12.0))
    scalar = ClipLossWithParts()(img, txt, scale)
    assert scalar.ndim == 0 and torch.allclose(scalar, standard)


def test_cache_labels_reuses_the_tensor_and_rebuilds_on_a_new_batch_size():
    cached = ClipLossWithParts(cache_labels=True)
    first = cached.get_ground_truth(torch.device("cpu"), 5)
    assert cached.get_ground_truth(torch.device("cpu"), 5) is first
    assert cached.get_ground_truth(torch.device("cpu"), 7).tolist() == list(range(7))
    plain = ClipLossWithParts(cache_labels=False)
    assert plain.get_ground_truth(torch.device("cpu"), 5) is not plain.get_ground_truth(
        torch.device("cpu"), 5)
    assert plain.labels == {}


@pytest.mark.parametrize("local_loss,offset", [(True, 3 * 4), (False, 0)])
def test_labels_are_offset_by_rank_under_local_loss_only(local_loss, offset):
    loss = ClipLossWithParts(local_loss=local_loss, rank=3, world_size=4, cache_labels=True)
    assert loss.get_ground_truth(torch.device("cpu"), 4).tolist() == [offset + i for i in range(4)]


def test_bad_arguments_are_refused_with_the_value():
    with pytest.raises(ScanConfigError, match="horovod"):
        ClipLossWithParts(use_horovod=True)
    with pytest.raises(ScanConfigError, match="got 2"):
        ClipLossWithParts(rank=2, world_size=2)
    img, txt = _features(4, 3, 0)
    with pytest.raises(ScanConfigError, match="logits.*CoCa"):
        ClipLossWithParts()(img, txt, torch.tensor(1.0), logits=img, labels=txt)
    with pytest.raises(ScanInputError, match=r"\(4, 3\).*\(3, 3\)"):
        ClipLossWithParts().parts(img, txt[:3], torch.tensor(1.0))


# -- the learning-rate step by fractional epoch ---------------------------------------------------

@given(nominal=st.integers(1, 500), epochs=st.integers(1, 8))
def test_without_pruning_the_schedule_sees_open_clips_own_steps(nominal, epochs):
    seen = []
    schedule = FractionalEpochSchedule(seen.append, nominal)
    for epoch in range(epochs):
        schedule.set_epoch(epoch, nominal)
        for i in range(nominal):
            schedule(nominal * epoch + i)
    assert seen == [float(s) for s in range(nominal * epochs)]


@given(nominal=st.integers(1, 300),
       kept=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=8))
def test_pruned_epochs_move_the_schedule_forward_and_each_covers_one_nominal_epoch(nominal, kept):
    """The authors' fork indexed steps by the shrunken length and ran the schedule backwards;
    here steps rise strictly, epoch e starts at e * nominal and the last one ends within one
    batch of the end of the schedule."""
    seen = []
    schedule = FractionalEpochSchedule(seen.append, nominal)
    for epoch, share in enumerate(kept):
        batches = max(1, int(share * nominal))
        schedule.set_epoch(epoch, batches)
        start = len(seen)
        for i in range(batches):
            schedule(batches * epoch + i)  # what train.py computes from the epoch's num_batches
        assert seen[start] == nominal * epoch
    assert all(b > a for a, b in zip(seen, seen[1:]))
    total = nominal * len(kept)
    assert total - nominal / max(1, int(kept[-1] * nominal)) - 1e-9 <= seen[-1] < total


def test_fractional_step_refuses_a_batch_beyond_the_epoch():
    assert fractional_step(0, 0, 1, 7) == 0.0
    with pytest.raises(ScanInputError, match="got 10"):
        fractional_step(1, 10, 10, 40)
    schedule = FractionalEpochSchedule(lambda s: s, 4)
    with pytest.raises(ScanStateError, match="set_epoch"):
        schedule(0)
    with pytest.raises(ScanConfigError, match="got 0"):
        FractionalEpochSchedule(lambda s: s, 0)


def test_cosine_reaches_its_end_under_pruning():
    """open_clip's cosine_lr (copied: scheduler.py, 3.3.0) fed by fractional steps ends near 0
    after epochs that keep 40% of the batches; indexed by the shrunken length it stays high."""
    base, warmup, nominal, epochs = 1.0, 2, 50, 6

    def cosine(step):
        if step < warmup:
            return base * (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (nominal * epochs - warmup))) * base

    schedule = FractionalEpochSchedule(cosine, nominal)
    batches = 20
    schedule.set_epoch(epochs - 1, batches)
    assert schedule(batches * (epochs - 1) + batches - 1) < 1e-3
    assert cosine(batches * (epochs - 1) + batches - 1) > 0.4  # the backwards index


# -- ids from the dataset to the loss -------------------------------------------------------------

class _Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.full((3,), float(i)), torch.tensor([i, i])


def test_ids_travel_with_their_samples_to_the_loss():
    slot = IdSlot()
    loader = DataLoader(WithIds(_Pairs()), batch_size=4, sampler=[7, 2, 9, 0, 5, 1, 3, 8])
    batches = IdBatches(loader, slot, num_batches=2, num_samples=8)
    assert len(batches) == 2
    for images, texts in batches:
        ids = slot.take(images.shape[0])
        assert ids.dtype == np.int64
        assert ids.tolist() == images[:, 0].long().tolist() == texts[:, 0].tolist()


def test_the_slot_refuses_lost_or_missing_ids():
    slot = IdSlot()
    with pytest.raises(ScanStateError, match="without a batch"):
        slot.take(3)
    slot.put(torch.arange(3))
    with pytest.raises(ScanStateError, match="accum-freq"):
        slot.put(torch.arange(3))
    with pytest.raises(ScanInputError, match="saw 4 samples.*3 ids"):
        slot.take(4)
    assert WithIds(_Pairs())[4][2] == 4
    with pytest.raises(ScanStateError, match="before set_epoch"):
        next(iter(IdBatches(None, slot, num_batches=1, num_samples=1)))


def test_the_docs_loop_without_the_patch_runs_and_prunes():
    import pathlib
    import re

    doc = pathlib.Path(__file__).resolve().parents[3] / "docs" / "open_clip.md"
    block = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)[0]
    namespace: dict = {}
    exec(compile(block, str(doc), "exec"), namespace)
    pruner = namespace["pruner"]
    assert pruner.next_epoch == namespace["EPOCHS"]
    phases = [row["phase"] for row in pruner.log]
    assert phases == ["warmup", "prepare", "mutate", "mutate"]
    assert pruner.log[-1]["num_kept"] < namespace["N"]
