"""Worker body of the two-rank (gloo) comparison of ClipLossWithParts with open_clip's ClipLoss.

`main(rank, world_size, port, out_dir)` joins a gloo group, runs every (local_loss,
gather_with_grad, dtype) case on inputs that are pure functions of (case, rank), and pickles
{case: (loss, theirs, parts, grads, their grads)} to out_dir/rank{rank}.pkl.
"""

from __future__ import annotations

import datetime
import importlib
import itertools
import os
import pickle
import traceback

import torch
import torch.distributed as dist
import torch.nn.functional as F

BATCH, DIM = 6, 5
CASES = list(itertools.product([False, True], [False, True], ["float32", "float64"]))


def features(case_index: int, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1000 * case_index + rank)
    img = F.normalize(torch.randn(BATCH, DIM, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(BATCH, DIM, generator=g, dtype=torch.float64), dim=1)
    return img.to(dtype), txt.to(dtype)


def run_case(case_index: int, rank: int, world_size: int) -> dict:
    from open_clip.loss import ClipLoss

    from adapters.torch.open_clip import ClipLossWithParts

    local_loss, with_grad, dtype_name = CASES[case_index]
    dtype = getattr(torch, dtype_name)
    kwargs = dict(local_loss=local_loss, gather_with_grad=with_grad, cache_labels=True,
                  rank=rank, world_size=world_size)
    out = {}
    for name, loss_fn in (("ours", ClipLossWithParts(**kwargs)), ("theirs", ClipLoss(**kwargs))):
        img, txt = (t.clone().requires_grad_() for t in features(case_index, rank, dtype))
        scale = torch.tensor(14.0, dtype=dtype, requires_grad=True)
        if name == "ours":
            parts = loss_fn.parts(img, txt, scale)
            loss = parts.loss
            out["parts"] = parts.per_sample.detach().double()
        else:
            loss = loss_fn(img, txt, scale)
        loss.backward()
        out[name] = (loss.item(), img.grad.double(), txt.grad.double(), scale.grad.item())
    return out


def main(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # open_clip's gather_with_grad imports torch.distributed.nn; import it before the group
    # exists (see tests/adapters/torch/_workers.py for the abort this avoids under gloo).
    importlib.import_module("torch.distributed.nn")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        result = {i: run_case(i, rank, world_size) for i in range(len(CASES))}
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
