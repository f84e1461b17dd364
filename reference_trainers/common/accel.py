"""Speed and memory switches for the GPU presets: mixed precision, torch.compile, gradient
checkpointing. Each is off unless asked for, and each is a no-op when off.

- `Precision` "fp32" | "bf16" | "fp16". bf16 keeps fp32's exponent range, so it needs no loss
  scaling; fp16 does, so `AmpSetup` holds a `torch.amp.GradScaler` for fp16 on CUDA only.
- `maybe_compile(model, enabled)`: `torch.compile` or the model itself. A compiled module's
  `state_dict` keys gain an `_orig_mod.` prefix: checkpoint `unwrap_compiled(model)`.
- `set_grad_checkpointing(model, enabled)`: switches every submodule that offers
  `set_grad_checkpointing` (ours and open_clip's towers) and says how many it switched.

Example (CPU, bf16 autocast):
    >>> import torch
    >>> amp = AmpSetup.create("bf16", device_type="cpu")
    >>> with amp.autocast():
    ...     y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    >>> y.dtype, amp.scaler is None
    (torch.bfloat16, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator
from typing import Literal, get_args

import torch
from torch import nn

from reference_trainers.common.errors import TrainerError

__all__ = ["AccelError", "AmpSetup", "Precision", "make_grad_scaler", "maybe_compile",
           "set_grad_checkpointing", "unwrap_compiled"]

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AccelError(TrainerError, ValueError):
    """A precision, compile or checkpointing option cannot be used."""


def _check_precision(precision: str) -> None:
    if precision not in get_args(Precision):
        raise AccelError(f"precision={precision!r}; allowed: {', '.join(get_args(Precision))}")


def make_grad_scaler(precision: str, *, cuda_available: bool | None = None
                     ) -> torch.amp.GradScaler | None:
    """A CUDA GradScaler for fp16 when CUDA is available, else None (fp32 and bf16 need no
    loss scaling; fp16 on a CPU runs unscaled). `cuda_available` defaults to
    `torch.cuda.is_available()`; tests pass it explicitly."""
    _check_precision(precision)
    if precision != "fp16":
        return None
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    return torch.amp.GradScaler("cuda") if cuda_available else None


@dataclasses.dataclass
class AmpSetup:
    """Mixed precision for one run: the autocast dtype (None for fp32), the device type, and
    the grad scaler (fp16 on CUDA only). Build it with `create`.

    Step with `backward_step(loss, optimizer)`: scaled backward, optional gradient clipping on
    unscaled gradients, step, scaler update; a plain backward and step without a scaler.
    """

    precision: Precision
    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @classmethod
    def create(cls, precision: str, *, device_type: str = "cuda",
               cuda_available: bool | None = None) -> "AmpSetup":
        _check_precision(precision)
        scaler = make_grad_scaler(precision, cuda_available=cuda_available) \
            if device_type == "cuda" else None
        return cls(precision=precision, device_type=device_type,  # type: ignore[arg-type]
                   dtype=_DTYPES.get(precision), scaler=scaler)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to `dtype` on `device_type`; a no-op for fp32. Run the forward and the loss
        inside it, the backward outside."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            yield

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, *,
                      max_grad_norm: float | None = None,
                      parameters: Iterable[nn.Parameter] | None = None) -> None:
        """loss.backward() and optimizer.step(), through the scaler when there is one.
        With `max_grad_norm`, clip the (unscaled) gradients of `parameters` first."""
        if max_grad_norm is not None and parameters is None:
            raise AccelError("max_grad_norm was given without parameters; pass "
                             "parameters=model.parameters() to clip")
        if self.scaler is None:
            loss.backward()
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(parameters, max_grad_norm)  # type: ignore[arg-type]
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if max_grad_norm is not None:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(parameters, max_grad_norm)  # type: ignore[arg-type]
        self.scaler.step(optimizer)
        self.scaler.update()


def maybe_compile(model: nn.Module, enabled: bool, **compile_kwargs: object) -> nn.Module:
    """`torch.compile(model, **compile_kwargs)` when enabled, else `model` itself (the same
    object). Compile after moving to the device and before wrapping in DDP."""
    if not enabled:
        return model
    return torch.compile(model, **compile_kwargs)  # type: ignore[return-value]


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module under a `torch.compile` wrapper (and under DDP's `.module`), for
    `state_dict` / `load_state_dict` with the plain key names."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, (nn.parallel.DistributedDataParallel,
                                                nn.DataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def set_grad_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Call `set_grad_checkpointing(enabled)` on every submodule of `model` (itself included)
    that has one; return how many. Enabling on a model where none has one raises AccelError
    (asking for memory savings that cannot happen should not pass silently)."""
    switched = 0
    for module in unwrap_compiled(model).modules():
        method = getattr(module, "set_grad_checkpointing", None)
        if callable(method):
            method(enabled)
            switched += 1
    if enabled and switched == 0:
        raise AccelError(f"{type(model).__name__} has no module with set_grad_checkpointing; "
                         "gradient checkpointing needs the transformer towers of "
                         "reference_trainers.models (or open_clip's); run without it")
    return switched


def place_model(model: nn.Module, *, precision: str, compile: bool, world: int
                ) -> tuple[nn.Module, nn.Module, torch.device, AmpSetup]:
    """A trainer's model made ready to train in this process: moved to its device (GPU
    LOCAL_RANK when CUDA is there, else the CPU), compiled when asked, then wrapped in DDP when
    `world` > 1 (that order: see `maybe_compile`).

    Returns (the model to train, its core without compile or DDP wrappers (evaluation,
    parameters, state_dict key names), the device, the autocast / grad-scaler setup).
    """
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) \
        if torch.cuda.is_available() else torch.device("cpu")
    amp = AmpSetup.create(precision, device_type=device.type)
    model = maybe_compile(model.to(device), compile)
    core = unwrap_compiled(model)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, core, device, amp
