"""Part 7b: the JAX losses of part 7a against the torch adapter's on the same inputs, on the
device (torch's float32 matmuls without TF32, its default). Pass: max |difference| <= 1e-5 for
the loss and every per-sample loss, at JAX's "highest" matmul precision; the gap at JAX's
default precision is reported too (on a GPU, XLA may use TF32 for float32 matmuls there).
"""

from __future__ import annotations

import numpy as np
import torch

from adapters.torch import clip_loss, moco_loss
from benchmarks.gpu_check import torch_steps as ts
from benchmarks.gpu_check.runner import PartContext

TOLERANCE = 1e-5


def run(ctx: PartContext) -> None:
    path = ctx.work_dir / "jax_losses.npz"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: part jax (7a) did not get to its losses")
    data = np.load(path)
    dev = ts.device()

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(data[name])).to(dev)

    torch_out = {"clip": clip_loss(t("image"), t("text"), float(data["scale"])),
                 "moco": moco_loss(t("q1"), t("q2"), t("k1"), t("k2"), 0.2)}
    worst = 0.0
    for name, out in torch_out.items():
        loss = out.loss.detach().cpu().numpy()
        per_sample = out.per_sample.detach().cpu().numpy()
        for precision in ("highest", "default"):
            gap = max(float(np.abs(loss - data[f"{name}_{precision}_loss"]).max()),
                      float(np.abs(per_sample - data[f"{name}_{precision}_per_sample"]).max()))
            judged = precision == "highest"
            if judged:
                worst = max(worst, gap)
            ok = gap <= TOLERANCE
            ctx.emit(f"{name}_loss JAX ({precision}) vs torch on {dev.type}", f"{gap:.2e}",
                     note=f"max |difference|, loss and per-sample; "
                          + (f"tolerance {TOLERANCE:g}: {'met' if ok else 'NOT met'}" if judged
                             else "reported only"), gap=gap)
    if worst > TOLERANCE:
        raise RuntimeError(f"JAX and torch losses differ by {worst:.2e} > {TOLERANCE:g} at "
                           "JAX's highest matmul precision")
