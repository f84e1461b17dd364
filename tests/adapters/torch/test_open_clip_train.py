"""The --scan hooks without open_clip: flags derived from ScanConfig, the refusals, the shard
index and the plan filter, and map-style data served by plan with its batch count announced
to the LR schedule (tests/integration runs them inside open_clip_train itself)."""

import argparse
import io
import json
import tarfile

import numpy as np
import pytest
import torch

from adapters.torch.open_clip import ClipLossWithParts, FractionalEpochSchedule, IdSlot
from adapters.torch.open_clip_data import KeepPlanned, ShardIndex, map_style_data
from adapters.torch.open_clip_train import (Disabled, ScanRun, add_args, attach,
                                            refuse_unsupported, scan_config)
from scan_core import ScanConfig, ScanPruner
from scan_core.errors import ScanConfigError, ScanInputError


def _args(*argv, **overrides):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10)
    add_args(parser)
    args = parser.parse_args(list(argv))
    defaults = dict(siglip=False, model="ViT-B-32", distill=False, accum_freq=1, horovod=False,
                    dataset_resampled=False, train_data_upsampling_factors=None)
    for key, value in {**defaults, **overrides}.items():
        setattr(args, key, value)
    return args


def test_every_scan_config_field_is_a_flag_and_unset_ones_keep_the_clip_defaults():
    args = _args("--scan", "--scan-rho-low", "0.2", "--scan-warmup-epochs", "2",
                 "--scan-mode", "redundant", "--scan-max-warmup-epochs", "null")
    assert args.scan
    config = scan_config(args)
    assert config == ScanConfig.clip(rho_low=0.2, warmup_epochs=2, mode="redundant", seed=7,
                                     num_epochs=10)
    assert scan_config(_args("--scan-seed", "3")).seed == 3
    with pytest.raises(ScanConfigError, match="rho_low"):
        scan_config(_args("--scan-rho-low", "1.5"))


@pytest.mark.parametrize("overrides,flag", [
    ({"siglip": True}, "--siglip"), ({"model": "coca_ViT-B-32"}, "--model coca_ViT-B-32"),
    ({"distill": True}, "--distill-model"), ({"accum_freq": 2}, "--accum-freq 2"),
    ({"horovod": True}, "--horovod"), ({"dataset_resampled": True}, "--dataset-resampled"),
    ({"train_data_upsampling_factors": "1::2"}, "--train-data-upsampling-factors")])
def test_unsupported_options_are_refused_by_name(overrides, flag):
    with pytest.raises(ScanConfigError, match=f"does not support {flag}"):
        refuse_unsupported(_args("--scan", **overrides))
    refuse_unsupported(_args("--scan"))


def test_without_scan_every_hook_hands_its_argument_back():
    hooks = attach(_args(), {"train": object()}, (None, None), None, 0)
    assert isinstance(hooks, Disabled)
    marker = object()
    assert hooks.schedule(marker) is marker and hooks.loss(marker) is marker
    assert hooks.end_epoch(0, None) is None


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name in members:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))


def test_the_shard_index_gives_dense_ids_to_samples_open_clip_trains_on(tmp_path):
    _tar(tmp_path / "a.tar", ["k1.png", "k1.txt", "k2.txt", "d/k3.JPG", "d/k3.txt", "k4.png"])
    _tar(tmp_path / "b.tar", ["k1.webp", "k1.txt", "scan-index.npz"])
    index = ShardIndex([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")])
    a, b = str(tmp_path / "a.tar"), str(tmp_path / "b.tar")
    assert index.ids == {(a, "k1"): 0, (a, "d/k3"): 1, (b, "k1"): 2}  # same key, two shards
    with pytest.raises(ScanConfigError, match="pipe:curl"):
        ShardIndex(["pipe:curl -s http://x/0.tar"])
    _tar(tmp_path / "c.tar", ["k.txt"])
    with pytest.raises(ScanInputError, match="no sample with a caption and an image"):
        ShardIndex([str(tmp_path / "c.tar")])


def test_keep_planned_drops_pruned_samples_before_decoding_and_adds_ids(tmp_path):
    _tar(tmp_path / "a.tar", [f"k{i}.{e}" for i in range(4) for e in ("png", "txt")])
    url = str(tmp_path / "a.tar")
    keep = KeepPlanned(ShardIndex([url]))
    samples = [{"__url__": url, "__key__": f"k{i}", "png": b"raw"} for i in range(4)]
    with pytest.raises(ScanInputError, match="set_epoch"):
        list(keep(samples))
    keep.kept = np.array([True, False, True, False])
    out = list(keep(samples + [{"__url__": url, "__key__": "other"}]))
    assert [s.get("__id__") for s in out] == [0, 2, None]
    assert out[0]["png"] == b"raw"  # still undecoded bytes


class _Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        return torch.full((2,), float(i)), torch.tensor([i])


def test_map_style_data_serves_the_plan_and_announces_its_batches(tmp_path):
    pruner = ScanPruner(40, 2, ScanConfig.clip(warmup_epochs=1, seed=1))
    slot = IdSlot()
    train = map_style_data(pruner, slot, _Pairs(), batch_size=8, rank=0, world_size=1,
                           workers=0, seed=1)
    assert train.nominal_batches == 5
    steps = []
    train.schedule = FractionalEpochSchedule(steps.append, train.nominal_batches)
    (tmp_path / "run").mkdir()
    run = ScanRun(argparse.Namespace(rank=0, epochs=4, logs=str(tmp_path), name="run"), pruner,
                  train, slot, None)
    loss = run.loss(_FakeClipLoss())
    assert isinstance(loss, ClipLossWithParts) and loss.cache_labels
    served = {}
    for epoch in range(4):
        train.set_epoch(epoch)
        loader = train.dataloader
        seen = []
        for i, (images, texts) in enumerate(loader):
            train.schedule(loader.num_batches * epoch + i)
            feats = torch.nn.functional.normalize(torch.randn(images.shape[0], 4), dim=1)
            loss(feats, feats, torch.tensor(5.0))
            seen += images[:, 0].long().tolist()
        assert len(seen) == loader.num_batches * 8 == loader.num_samples
        assert set(seen) <= set(pruner.plan_epoch(epoch).kept_ids.tolist())
        served[epoch] = len(seen)
        run.end_epoch(epoch)
    assert [row["phase"] for row in pruner.log] == ["warmup", "prepare", "mutate", "mutate"]
    assert served[3] < served[0] == 40
    assert steps[:5] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(b > a for a, b in zip(steps, steps[1:]))
    coreset = json.loads((tmp_path / "run" / "scan-coreset.json").read_text())
    assert coreset["ids"] == pruner.coreset().tolist() and len(coreset["ids"]) < 40


class _FakeClipLoss:
    """The attributes of open_clip's ClipLoss that ScanRun.loss reads."""
    local_loss, gather_with_grad, cache_labels, rank, world_size = False, False, True, 0, 1


_FakeClipLoss.__name__ = "ClipLoss"


def test_scan_run_refuses_other_losses():
    run = ScanRun(argparse.Namespace(rank=0), None, None, IdSlot(), None)

    class SigLipLoss:
        pass

    with pytest.raises(ScanConfigError, match="got SigLipLoss"):
        run.loss(SigLipLoss())
