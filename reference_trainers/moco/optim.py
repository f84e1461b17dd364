"""MoCo v3's optimisers: LARS (its ResNet default) and AdamW (its ViT default).

LARS (You et al. 2017, as MoCo v3 uses it): for every weight matrix or kernel (ndim > 1)

    g     = grad + weight_decay * p
    trust = trust_coefficient * ||p|| / ||g||   (1 when either norm is 0)
    mu    = momentum * mu + trust * g
    p     = p - lr * mu

Biases and normalisation parameters (ndim <= 1) skip both the weight decay and the trust
ratio and take plain momentum SGD steps, as in MoCo v3.

>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
>>> w.grad = torch.tensor([[0.6, 0.8]])
>>> LARS([w], lr=1.0, trust_coefficient=0.1).step()
>>> w.detach().tolist()                     # trust = 0.1 * 5 / 1 = 0.5
[[2.700000047683716, 3.5999999046325684]]
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from reference_trainers.common.errors import TrainerError

__all__ = ["LARS", "OPTIMIZERS", "build_optimizer"]

OPTIMIZERS = ("lars", "adamw")


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum (see the module docstring)."""

    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, trust_coefficient: float = 0.001) -> None:
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum),
                            ("trust_coefficient", trust_coefficient)):
            if value < 0:
                raise TrainerError(f"LARS {name}={value!r}: must be >= 0")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.linalg.vector_norm(p), \
                        torch.linalg.vector_norm(update)
                    trust = torch.where((param_norm > 0) & (update_norm > 0),
                                        group["trust_coefficient"] * param_norm / update_norm,
                                        torch.ones_like(param_norm))
                    update = update * trust
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                state["mu"].mul_(group["momentum"]).add_(update)
                p.add_(state["mu"], alpha=-group["lr"])
        return loss


def build_optimizer(name: str, params: Iterable[nn.Parameter], *, lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """`lars` (momentum 0.9, trust 0.001) or `adamw` (torch's defaults, as MoCo v3 calls it)."""
    if name == "lars":
        return LARS(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise TrainerError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
