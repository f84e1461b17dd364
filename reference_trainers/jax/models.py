"""The CPU CLIP in flax: a small CNN image tower and a small causal text transformer, the same
architecture as reference_trainers/clip/model.py (Radford et al. 2021, section 2.5).

Why flax.linen rather than flax.nnx: the trainer's step is a pure jitted function of an
explicit state pytree (params, batch statistics, optimiser state) that it donates and that a
checkpoint flattens to arrays. Linen's `init` / `apply` hand out exactly such pytrees, with
BatchNorm statistics as a separate `batch_stats` collection; nnx keeps state inside mutable
objects and would need a split / merge around every jit boundary to give the same thing.

Initialisation follows torch's defaults where it shapes training: kernels uniform with variance
1 / (3 fan_in) (torch's kaiming_uniform(a=sqrt(5))), token embeddings N(0, 0.02^2), positional
embeddings N(0, 0.01^2), LayerNorm and BatchNorm eps 1e-5, BatchNorm running averages with
torch's momentum 0.1, exact (erf) GELU. Biases start at zero (torch draws them uniform).

>>> import jax, jax.numpy as jnp
>>> model = CLIP(vocab_size=100, eot_id=2)
>>> images, tokens = jnp.zeros((4, 28, 28, 1)), jnp.full((4, 24), 2)
>>> variables = model.init(jax.random.PRNGKey(0), images, tokens)
>>> (i, t, scale), _ = model.apply(variables, images, tokens, train=True,
...                                mutable=["batch_stats"])
>>> i.shape, t.shape, round(float(scale), 2)
((4, 128), (4, 128), 14.29)
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["CLIP", "ImageCNN", "TextTransformer", "TORCH_KERNEL_INIT", "l2_normalise"]

TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
"""torch's default Linear / Conv weight init: U(+-1/sqrt(fan_in)), variance 1 / (3 fan_in)."""


def l2_normalise(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows of (B, D) scaled to unit norm, as torch.nn.functional.normalize (eps 1e-12)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def batch_norm(train: bool, *, use_scale: bool = True, use_bias: bool = True) -> nn.BatchNorm:
    """BatchNorm with torch's constants: running averages move 0.1 toward each batch; eps 1e-5."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        use_scale=use_scale, use_bias=use_bias)


def row_mask(valid: jax.Array | None, x: jax.Array) -> jax.Array | None:
    """A padded batch's (B,) `valid` shaped to broadcast over x (B, ...): BatchNorm's `mask`,
    so its batch statistics leave the padding rows out (adapters.jax.pad_batch)."""
    return None if valid is None else valid.reshape(valid.shape + (1,) * (x.ndim - 1))


class ImageCNN(nn.Module):
    """Three conv3x3(stride 2)-BN-ReLU blocks (28 -> 14 -> 7 -> 4; widths w, 2w, 4w), global
    average pool, linear to `embed_dim`. (B, H, W, C) float32 -> (B, embed_dim), not normalised.
    Images are NHWC, flax's layout (torch's tower takes NCHW)."""

    width: int = 32
    embed_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, valid: jax.Array | None = None) -> jax.Array:
        for mult in (1, 2, 4):
            x = nn.Conv(self.width * mult, (3, 3), strides=2, padding=1, use_bias=False,
                        kernel_init=TORCH_KERNEL_INIT)(x)
            x = nn.relu(batch_norm(train)(x, mask=row_mask(valid, x)))
        return nn.Dense(self.embed_dim, kernel_init=TORCH_KERNEL_INIT)(x.mean(axis=(1, 2)))


class CausalBlock(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)) under a causal mask, then x + MLP(LN(x))."""

    width: int
    heads: int
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # Dense layers see (B * L, width): XLA's CPU backend computes a kernel's gradient from
        # a 2-D input about 4x faster than from a (B, L, width) one (measured).
        batch, length, width = x.shape
        head_dim = width // self.heads
        x = x.reshape(batch * length, width)
        qkv = nn.Dense(3 * width, kernel_init=TORCH_KERNEL_INIT, name="qkv")(
            nn.LayerNorm(epsilon=1e-5, name="ln_attn")(x))
        q, k, v = jnp.moveaxis(qkv.reshape(batch, length, 3, self.heads, head_dim), 2, 0)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        attended = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        x = x + nn.Dense(width, kernel_init=TORCH_KERNEL_INIT, name="out")(
            attended.reshape(batch * length, width))
        h = nn.LayerNorm(epsilon=1e-5, name="ln_mlp")(x)
        h = nn.Dense(self.mlp_ratio * width, kernel_init=TORCH_KERNEL_INIT, name="fc1")(h)
        h = nn.Dense(width, kernel_init=TORCH_KERNEL_INIT, name="fc2")(
            nn.gelu(h, approximate=False))
        return (x + h).reshape(batch, length, width)


class TextTransformer(nn.Module):
    """Token + learned positional embeddings, `layers` pre-LN causal blocks, a final LayerNorm,
    the hidden state at each row's first <eot> (the last position when a row has none), a
    linear projection without bias. (B, L) int -> (B, embed_dim), not normalised.

    All L positions are computed (torch's tower cuts the columns after the batch's last <eot>,
    which needs the data on the host; under the causal mask the output is the same)."""

    vocab_size: int
    eot_id: int
    context_length: int = 24
    width: int = 64
    layers: int = 2
    heads: int = 4
    embed_dim: int = 128

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be divisible by heads={self.heads}; "
                             "pick a width that is a multiple of the head count")
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"tokens have length {tokens.shape[1]}, longer than context_length="
                             f"{self.context_length}; tokenize with that context length")
        embed = nn.Embed(self.vocab_size, self.width,
                         embedding_init=nn.initializers.normal(0.02), name="token_embedding")
        positional = self.param("positional_embedding", nn.initializers.normal(0.01),
                                (self.context_length, self.width))
        x = embed(tokens) + positional[: tokens.shape[1]]
        for i in range(self.layers):
            x = CausalBlock(self.width, self.heads, name=f"block{i}")(x)
        x = nn.LayerNorm(epsilon=1e-5, name="ln_final")(x)
        is_eot = tokens == self.eot_id
        eot = jnp.where(is_eot.any(axis=1), jnp.argmax(is_eot, axis=1), tokens.shape[1] - 1)
        return nn.Dense(self.embed_dim, use_bias=False, kernel_init=TORCH_KERNEL_INIT,
                        name="proj")(x[jnp.arange(x.shape[0]), eot])


class CLIP(nn.Module):
    """The cpu preset's CLIP: ImageCNN(width 32) and a 2-layer, width-64, 4-head text tower,
    both to `embed_dim`, and `logit_scale` holding log(scale), initialised to log(1 / 0.07);
    the scale used is exp(min(logit_scale, log 100)).

    `__call__(images (B, 28, 28, 1), tokens (B, L), train, valid=None)` -> (image_features
    (B, D), text_features (B, D), scale ()), features L2-normalised; `valid` (B,) bool marks
    a padded batch's real rows for BatchNorm's statistics (adapters.jax.pad_batch).
    `encode_image` / `encode_text` are the evaluation faces (use
    `model.apply(variables, x, method="encode_image")`)."""

    vocab_size: int
    eot_id: int
    context_length: int = 24
    embed_dim: int = 128
    image_width: int = 32
    max_logit_scale: float = math.log(100)

    def setup(self) -> None:
        self.visual = ImageCNN(self.image_width, self.embed_dim)
        self.text = TextTransformer(self.vocab_size, self.eot_id, self.context_length,
                                    embed_dim=self.embed_dim)
        self.logit_scale = self.param("logit_scale",
                                      nn.initializers.constant(math.log(1 / 0.07)), ())

    def encode_image(self, images: jax.Array, train: bool = False,
                     valid: jax.Array | None = None) -> jax.Array:
        return l2_normalise(self.visual(images, train, valid))

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        return l2_normalise(self.text(tokens))

    def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = False,
                 valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        scale = jnp.exp(jnp.minimum(self.logit_scale, self.max_logit_scale))
        return self.encode_image(images, train, valid), self.encode_text(tokens), scale
