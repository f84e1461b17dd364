"""MoCo v3's CPU models in flax.linen (Chen, Xie and He 2021), the architecture of
reference_trainers/moco/model.py: the backbones `SmallResNet` and `VitTiny`, the projector and
predictor MLPs, and the base encoder that the momentum encoder copies.

    base encoder     = backbone -> projector                   `Encoder`
    query            = predictor(base encoder(x))              `MoCoNet` (params "base", "predictor")
    momentum encoder = `Encoder` applied with the EMA of the "base" params (jax/steps.py)

flax.linen for the reason given in jax/models.py: pure init / apply over explicit pytrees,
which the momentum encoder needs most (its parameters are just another pytree, the EMA of the
base encoder's, applied with the same module). Kernels use torch's default initialisation
(jax/models.TORCH_KERNEL_INIT); BatchNorm uses torch's momentum and eps.

>>> import jax, jax.numpy as jnp
>>> net = MoCoNet(backbone="resnet", width=8, dim=16, mlp_dim=32)
>>> variables = net.init(jax.random.PRNGKey(0), jnp.zeros((4, 28, 28, 1)))
>>> sorted(variables["params"]), net.apply(variables, jnp.zeros((4, 28, 28, 1))).shape
(['base', 'predictor'], (4, 16))
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reference_trainers.common.errors import TrainerError
from reference_trainers.jax.models import TORCH_KERNEL_INIT, batch_norm, row_mask

__all__ = ["BACKBONES", "Encoder", "MLP", "MoCoNet", "SmallResNet", "VitTiny", "encoder_of"]

BACKBONES = ("resnet", "vit-tiny")


def _conv(features: int, kernel: int, stride: int, name: str | None = None) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), strides=stride, padding=kernel // 2,
                   use_bias=False, kernel_init=TORCH_KERNEL_INIT, name=name)


class BasicBlock(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, valid: jax.Array | None = None) -> jax.Array:
        mask = row_mask(valid, x)
        out = nn.relu(batch_norm(train)(_conv(self.features, 3, self.stride)(x), mask=mask))
        out = batch_norm(train)(_conv(self.features, 3, 1)(out), mask=mask)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = batch_norm(train)(_conv(self.features, 1, self.stride, name="shortcut")(x),
                                  mask=mask)
        return nn.relu(out + x)


class SmallResNet(nn.Module):
    """3x3 stem (stride `stem_stride`) -> BN -> ReLU, three stages of one basic block (widths
    w, 2w, 4w; strides 1, 2, 2), global average pool. (B, 28, 28, C) -> (B, 4w)."""

    width: int = 32
    stem_stride: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, valid: jax.Array | None = None) -> jax.Array:
        x = nn.relu(batch_norm(train)(_conv(self.width, 3, self.stem_stride, name="stem")(x),
                                      mask=row_mask(valid, x)))
        for mult, stride in ((1, 1), (2, 2), (4, 2)):
            x = BasicBlock(self.width * mult, stride)(x, train, valid)
        return x.mean(axis=(1, 2))


def _sincos_2d(grid: int, dim: int) -> np.ndarray:
    """MoCo v3's fixed 2-D sine-cosine position embedding: (grid * grid, dim), dim % 4 == 0."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (np.arange(quarter, dtype=np.float32) / quarter))
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32),
                         indexing="ij")
    out_x, out_y = xs.reshape(-1)[:, None] * omega, ys.reshape(-1)[:, None] * omega
    return np.concatenate([np.sin(out_x), np.cos(out_x), np.sin(out_y), np.cos(out_y)], axis=1)


class _EncoderBlock(nn.Module):
    """Pre-norm block as torch's TransformerEncoderLayer(norm_first=True, gelu, no dropout)."""

    dim: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.LayerNorm(epsilon=1e-5)(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads,
                                                kernel_init=TORCH_KERNEL_INIT)(h, h)
        h = nn.LayerNorm(epsilon=1e-5)(x)
        h = nn.gelu(nn.Dense(4 * self.dim, kernel_init=TORCH_KERNEL_INIT)(h), approximate=False)
        return x + nn.Dense(self.dim, kernel_init=TORCH_KERNEL_INIT)(h)


class VitTiny(nn.Module):
    """4 x 4 patches (7 x 7 tokens) + a class token, fixed 2-D sin-cos positions, `depth`
    pre-norm blocks, the class token's final LayerNorm output. (B, 28, 28, C) -> (B, dim)."""

    dim: int = 96
    depth: int = 4
    heads: int = 3
    patch: int = 4
    image_size: int = 28

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, valid: jax.Array | None = None) -> jax.Array:
        del train, valid  # no BatchNorm: every row is computed on its own
        if self.image_size % self.patch or self.dim % 4 or self.dim % self.heads:
            raise TrainerError(f"VitTiny(image_size={self.image_size}, patch={self.patch}, "
                               f"dim={self.dim}, heads={self.heads}): need image_size % patch "
                               "== 0, dim % 4 == 0 and dim % heads == 0")
        grid = self.image_size // self.patch
        tokens = nn.Conv(self.dim, (self.patch, self.patch), strides=self.patch,
                         padding="VALID", kernel_init=TORCH_KERNEL_INIT,
                         name="patch_embed")(x).reshape(x.shape[0], grid * grid, self.dim)
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.dim))
        tokens = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)), tokens], 1)
        pos = np.concatenate([np.zeros((1, self.dim), np.float32), _sincos_2d(grid, self.dim)])
        tokens = tokens + pos[None]
        for _ in range(self.depth):
            tokens = _EncoderBlock(self.dim, self.heads)(tokens)
        return nn.LayerNorm(epsilon=1e-5, name="norm")(tokens)[:, 0]


class MLP(nn.Module):
    """MoCo v3's MLP: Dense (no bias) -> BN -> ReLU per hidden layer, a last Dense (no bias)
    and, with last_bn, a BatchNorm without affine parameters (MoCo v3, section 3)."""

    num_layers: int
    mlp_dim: int
    output_dim: int
    last_bn: bool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, valid: jax.Array | None = None) -> jax.Array:
        mask = row_mask(valid, x)
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = nn.Dense(self.output_dim if last else self.mlp_dim, use_bias=False,
                         kernel_init=TORCH_KERNEL_INIT)(x)
            if not last:
                x = nn.relu(batch_norm(train)(x, mask=mask))
            elif self.last_bn:
                x = batch_norm(train, use_scale=False, use_bias=False)(x, mask=mask)
        return x


class _Sized(nn.Module):
    """The sizes MoCoNet and its Encoder share: the backbone (resnet | vit-tiny), SmallResNet
    width, projector / predictor output dim and hidden mlp_dim."""

    backbone: str = "resnet"
    width: int = 16
    dim: int = 128
    mlp_dim: int = 512


class Encoder(_Sized):
    """Backbone -> projector (2 layers for the ResNet, 3 for the ViT, as MoCo v3)."""

    def setup(self) -> None:
        if self.backbone not in BACKBONES:
            raise TrainerError(f"unknown backbone {self.backbone!r} for the JAX trainer; choose "
                               f"one of {BACKBONES}")
        self.net = SmallResNet(self.width) if self.backbone == "resnet" else VitTiny()
        self.projector = MLP(2 if self.backbone == "resnet" else 3, self.mlp_dim, self.dim,
                             last_bn=True)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The backbone's features (before the projector): what evaluation probes."""
        return self.net(x, train)

    def __call__(self, x: jax.Array, train: bool = False,
                 valid: jax.Array | None = None) -> jax.Array:
        """`valid` (B,) bool: a padded batch's real rows, for BatchNorm's statistics."""
        return self.projector(self.net(x, train, valid), train, valid)


class MoCoNet(_Sized):
    """The trained half of MoCo v3: q = predictor(base encoder(x)). (B, 28, 28, 1) -> (B, dim)."""

    def setup(self) -> None:
        self.base = Encoder(self.backbone, self.width, self.dim, self.mlp_dim)
        self.predictor = MLP(2, self.mlp_dim, self.dim, last_bn=False)

    def features(self, x: jax.Array) -> jax.Array:
        """Frozen backbone features for evaluation (BatchNorm on running statistics)."""
        return self.base.features(x, False)

    def __call__(self, x: jax.Array, train: bool = False,
                 valid: jax.Array | None = None) -> jax.Array:
        return self.predictor(self.base(x, train, valid), train, valid)


def encoder_of(net: MoCoNet) -> Encoder:
    """A standalone twin of `net.base` (its params are `params["base"]`), for the momentum
    encoder's apply."""
    return Encoder(net.backbone, net.width, net.dim, net.mlp_dim, parent=None)
