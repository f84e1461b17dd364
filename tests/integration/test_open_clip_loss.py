"""ClipLossWithParts against open_clip's own ClipLoss (open-clip-torch 3.3.0): the same loss to
1e-6 and the same gradients, one process and two gloo ranks, every local_loss /
gather_with_grad combination; the per-sample parts average to the loss."""

import pickle
import socket

import pytest
import torch

open_clip_loss = pytest.importorskip("open_clip.loss", reason="needs make test-integration's venv")

from adapters.torch.open_clip import ClipLossWithParts  # noqa: E402
from tests.integration import _ranks  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("bias", [None, -2.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_process_equals_clip_loss(dtype, bias):
    img, txt = _ranks.features(0, 0, dtype)
    ours_in = [img.clone().requires_grad_(), txt.clone().requires_grad_()]
    theirs_in = [img.clone().requires_grad_(), txt.clone().requires_grad_()]
    scale = torch.tensor(14.0, dtype=dtype)
    logit_bias = None if bias is None else torch.tensor(bias, dtype=dtype)
    ours = ClipLossWithParts(cache_labels=True)
    parts = ours.parts(*ours_in, scale, logit_bias)
    theirs = open_clip_loss.ClipLoss(cache_labels=True)(*theirs_in, scale, logit_bias,
                                                         output_dict=True)["contrastive_loss"]
    assert abs(parts.loss.item() - theirs.item()) <= 1e-6
    assert abs(parts.per_sample.mean().item() - theirs.item()) <= 1e-6
    parts.loss.backward()
    theirs.backward()
    for a, b in zip(ours_in, theirs_in):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    assert ours(*[t.detach() for t in ours_in], scale, logit_bias).item() == pytest.approx(
        theirs.item(), abs=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    torch.multiprocessing.spawn(_ranks.main, args=(2, _free_port(), str(out)), nprocs=2,
                                start_method="spawn")
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(2)]


@pytest.mark.distributed
@pytest.mark.parametrize("case", range(len(_ranks.CASES)),
                         ids=[f"local{a}-grad{b}-{c}" for a, b, c in _ranks.CASES])
def test_two_gloo_ranks_equal_clip_loss(two_ranks, case):
    local_loss, _, dtype = _ranks.CASES[case]
    tol = 1e-6 if dtype == "float32" else 1e-12
    rank_losses = []
    for rank, result in enumerate(two_ranks):
        out = result[case]
        ours, theirs = out["ours"], out["theirs"]
        assert abs(ours[0] - theirs[0]) <= tol, (rank, ours[0], theirs[0])
        for mine, want in zip(ours[1:3], theirs[1:3]):  # image and text gradients
            assert torch.allclose(mine, want, rtol=1e-5, atol=1e-7)
        assert ours[3] == pytest.approx(theirs[3], rel=1e-5, abs=1e-7)  # logit scale
        assert out["parts"].shape == (2, _ranks.BATCH)
        rank_losses.append(theirs[0])
        if local_loss:  # each rank's loss is the mean over its own rows
            assert abs(out["parts"].mean().item() - theirs[0]) <= tol
    # Averaged over ranks, the parts are the global loss in every mode.
    parts_mean = torch.stack([r[case]["parts"] for r in two_ranks]).mean().item()
    assert abs(parts_mean - sum(rank_losses) / 2) <= tol
    if not local_loss:
        assert abs(parts_mean - rank_losses[0]) <= tol and abs(rank_losses[0] - rank_losses[1]) <= tol
