"""The JAX trainers' state, optimisers, schedules and pure jitted train steps.

One step is `train_step(state, batch) -> (state, metrics)`, jitted with the state donated
(`donate_argnums=0`: XLA updates parameters and optimiser moments in place instead of holding
two copies). `metrics["per_sample"]` is the (2, B) per-sample loss from the same computation as
the loss (adapters.jax.clip_loss / moco_loss), for `AsyncRecorder.push`.

Schedules follow progress in fractional epochs, as the PyTorch trainers' (common/schedule.py):
the batch carries `progress` = epoch + (i + 1) / batches_this_epoch, and the step evaluates
optax's warm-up cosine schedule (and MoCo v3's cosine momentum, an optax cosine decay of
1 - m) at it, so a pruned, shorter epoch still ends both schedules exactly at the last step.
The learning rate reaches the optimiser through `optax.inject_hyperparams`.

Data parallelism is GSPMD over the local devices: a Mesh with axis "data", the batch sharded
over it (`place_batch`), the state replicated (`replicate`); XLA inserts the collectives, so
the loss sees the whole batch (global negatives, BatchNorm over the whole batch) and the result
equals one device's up to float summation order. With one device it is a no-op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from adapters.jax import clip_loss, data_mesh, moco_loss, shard_batch
from reference_trainers.common.errors import TrainerError

__all__ = ["TrainState", "build_optimizer", "init_variables", "lr_schedule", "momentum_schedule", "local_mesh",
           "make_clip_step", "make_moco_step", "place_batch", "replicate", "set_learning_rate"]

OPTIMIZERS = ("lars", "adamw")


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: params and batch_stats (flax collections), opt_state (optax),
    and for MoCo the momentum encoder's ema_params / ema_batch_stats (None for CLIP)."""

    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any = None
    ema_batch_stats: Any = None


# == Initialisation ==============================================================================
@functools.lru_cache(maxsize=8)
def _jitted_init(model: nn.Module) -> Callable:
    return jax.jit(model.init)


def init_variables(model: nn.Module, seed: int, *inputs: Any) -> Any:
    """`model.init` with a key from `seed`, jitted once per model (cached for the process).

    The key is JAX's "rbg" generator rather than the default threefry: XLA's CPU backend
    compiles the init of these models about 4x faster with it (2.5 s against 9.6 s measured
    for the MoCo ResNet on 2 busy cores). Its draws are a deterministic function of the seed
    for a given JAX / XLA version, which is all initialisation needs: checkpoints hold the
    values, so a resume never re-draws them."""
    return _jitted_init(model)(jax.random.key(seed, impl="rbg"), *inputs)


# == Optimisers and schedules =====================================================================
def _matrices(params: Any) -> Any:
    """True for weight matrices and kernels (ndim > 1): what LARS decays and trust-scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def build_optimizer(name: str, *, weight_decay: float) -> optax.GradientTransformation:
    """`adamw` (optax.adamw: torch's defaults, decay on every parameter as torch.optim.AdamW)
    or `lars` (optax.lars: momentum 0.9, trust coefficient 0.001, decay and trust ratio on
    matrices and kernels only, as MoCo v3's LARS). The learning rate is injected per step."""
    if name == "adamw":
        return optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, b1=0.9, b2=0.999,
                                                     eps=1e-8, weight_decay=weight_decay)
    if name == "lars":
        return optax.inject_hyperparams(
            optax.lars, static_args=("weight_decay_mask", "trust_ratio_mask"))(
            learning_rate=0.0, weight_decay=weight_decay, weight_decay_mask=_matrices,
            trust_ratio_mask=_matrices, trust_coefficient=0.001, momentum=0.9)
    raise TrainerError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def set_learning_rate(opt_state: Any, lr: jax.Array) -> Any:
    """The optimiser state with its injected learning rate replaced by `lr`."""
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, dtype=hyper["learning_rate"].dtype)
    return opt_state._replace(hyperparams=hyper)


def lr_schedule(base_lr: float, epochs: float, warmup_epochs: float,
                min_lr: float) -> Callable[[jax.Array], jax.Array]:
    """progress (fractional epochs) -> lr: linear warm-up from 0 over `warmup_epochs`, then
    cosine to `min_lr` at `epochs` (optax.warmup_cosine_decay_schedule; common/schedule.py's
    cosine_lr to float32 rounding)."""
    if warmup_epochs <= 0:
        return optax.cosine_decay_schedule(base_lr, epochs, alpha=min_lr / base_lr if base_lr
                                           else 0.0)
    return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=base_lr,
                                              warmup_steps=warmup_epochs, decay_steps=epochs,
                                              end_value=min_lr)


def momentum_schedule(base_momentum: float, epochs: float) -> Callable[[jax.Array], jax.Array]:
    """MoCo v3's cosine momentum, m = 1 - (1 - m0) (cos(pi t) + 1) / 2 with t = progress /
    epochs: 1 minus an optax cosine decay of 1 - m0 (reference_trainers/moco/model.py's
    moco_momentum to float32 rounding)."""
    decay = optax.cosine_decay_schedule(1.0 - base_momentum, epochs)
    return lambda progress: 1.0 - decay(progress)


# == Placement ====================================================================================
def local_mesh() -> Mesh:
    """A 1-D Mesh over this process's devices, axis "data"."""
    return data_mesh(jax.local_devices())


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Every leaf of `tree` copied to every device of `mesh` (parameters, optimiser state).
    Under several processes each process passes the same values (a tree built from the same
    seed or checkpoint) and places its own devices' copies."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(x: Any) -> jax.Array:
        value = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, tree)


def place_batch(mesh: Mesh, batch: dict[str, Any]) -> dict[str, Any]:
    """A host batch on the mesh: arrays with a batch axis split over "data" when their length
    divides over the devices (adapters.jax.shard_batch), else replicated (a short last batch;
    the step is still exact, only not split); scalars replicated.

    Under several processes `batch` is this process's part of the global batch (every process
    passes the same length): split over its devices when the length divides over them, else
    split over the processes only and replicated on each process's devices (`_process_mesh`)."""
    rows = {k: v for k, v in batch.items() if np.ndim(v) > 0}
    scalars = {k: v for k, v in batch.items() if np.ndim(v) == 0}
    length = len(next(iter(rows.values())))
    if jax.process_count() > 1:
        local = len(mesh.local_devices)
        placed = shard_batch(mesh if length % local == 0 else _process_mesh(mesh), rows)
    else:
        placed = shard_batch(mesh, rows) if length % mesh.size == 0 else replicate(mesh, rows)
    return {**placed, **replicate(mesh, scalars)}


@functools.lru_cache(maxsize=4)
def _process_mesh(mesh: Mesh) -> Mesh:
    """`mesh`'s devices as (process, local device): axis "data" over the processes, "replica"
    over each process's devices (jit accepts it beside `mesh`: the same devices)."""
    devices = sorted(mesh.devices.flat, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices).reshape(jax.process_count(), -1), ("data", "replica"))


# == CLIP =========================================================================================
def make_clip_step(model: nn.Module, tx: optax.GradientTransformation,
                   schedule: Callable[[jax.Array], jax.Array]) -> Callable:
    """The CLIP train step. batch: images float32 (B, H, W, C), tokens int (B, L), progress
    float32 (), optional weights float32 (B,) (InfoBatch's), optional valid bool (B,) (a
    padded batch's real rows: adapters.jax.pad_batch). metrics: loss (), lr (),
    per_sample (2, B)."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        def loss_fn(params):
            (image, text, scale), updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, batch["images"],
                batch["tokens"], train=True, valid=batch.get("valid"), mutable=["batch_stats"])
            out = clip_loss(image, text, scale, weights=batch.get("weights"),
                            valid=batch.get("valid"))
            return out.loss, (out.per_sample, updates["batch_stats"])

        (loss, (per_sample, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        lr = schedule(batch["progress"])
        updates, opt_state = tx.update(grads, set_learning_rate(state.opt_state, lr),
                                       state.params)
        state = state.replace(params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
        return state, {"loss": loss, "lr": lr, "per_sample": per_sample}

    return jax.jit(train_step, donate_argnums=0)


# == MoCo v3 ======================================================================================
def make_moco_step(model: nn.Module, encoder: nn.Module, tx: optax.GradientTransformation,
                   schedule: Callable[[jax.Array], jax.Array],
                   momentum: Callable[[jax.Array], jax.Array], temperature: float) -> Callable:
    """The MoCo v3 train step. `model` maps crops to predictor outputs q (params
    {"base", "predictor"}); `encoder` is its base encoder alone, which the momentum encoder
    runs with ema_params. batch: x1, x2 float32 (B, H, W, C), progress float32 (), optional
    weights (B,), optional valid bool (B,) (a padded batch's real rows: BatchNorm's statistics
    and the loss leave the padding out). The momentum encoder is updated first,
    k <- m k + (1 - m) q, and the keys computed with it (BatchNorm in training mode, its own
    statistics), as MoCo v3 does.
    metrics: loss, lr, momentum, per_sample (2, B) = (ctr(q1, k2), ctr(q2, k1))."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        m = momentum(batch["progress"])
        ema_params = jax.tree.map(lambda k, q: m * k + (1.0 - m) * q, state.ema_params,
                                  state.params["base"])
        ema_stats = state.ema_batch_stats
        keys = []
        for crop in ("x1", "x2"):
            k, updates = encoder.apply({"params": ema_params, "batch_stats": ema_stats},
                                       batch[crop], train=True, valid=batch.get("valid"),
                                       mutable=["batch_stats"])
            keys.append(k)
            ema_stats = updates["batch_stats"]

        def loss_fn(params):
            stats, queries = state.batch_stats, []
            for crop in ("x1", "x2"):
                q, updates = model.apply({"params": params, "batch_stats": stats}, batch[crop],
                                         train=True, valid=batch.get("valid"),
                                         mutable=["batch_stats"])
                queries.append(q)
                stats = updates["batch_stats"]
            out = moco_loss(*queries, *keys, temperature, weights=batch.get("weights"),
                            valid=batch.get("valid"))
            return out.loss, (out.per_sample, stats)

        (loss, (per_sample, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        lr = schedule(batch["progress"])
        updates, opt_state = tx.update(grads, set_learning_rate(state.opt_state, lr),
                                       state.params)
        state = state.replace(
            params=optax.apply_updates(state.params, updates), batch_stats=batch_stats,
            opt_state=opt_state, ema_params=ema_params, ema_batch_stats=ema_stats)
        return state, {"loss": loss, "lr": lr, "momentum": m, "per_sample": per_sample}

    return jax.jit(train_step, donate_argnums=0)
