"""Vision Transformer (Dosovitskiy et al. 2021) for two roles in the paper's experiments:

- CLIP's image tower ViT-B/32 (Radford et al. 2021): patch conv without bias, a LayerNorm
  before the blocks (`pre_norm=True`), learned position embeddings, the class token read after
  a final LayerNorm and projected without bias to the joint embedding (`output_dim`).
- MoCo v3's backbone ViT-S/16 and ViT-B/16 (Chen, Xie and He 2021): patch conv with bias, no
  LayerNorm before the blocks, fixed 2-D sin-cos position embeddings (MoCo v3's
  `vits.py`), optionally a frozen random patch projection (their "stop-grad conv1"
  stability trick), the class token after a final LayerNorm, no head (`output_dim=None`): the
  MoCo projector and predictor sit on top.

Also the pre-LN transformer block shared with the CLIP text tower (`TransformerBlock`) and
`run_blocks`, which applies activation (gradient) checkpointing per block when asked.

Example:
    >>> import torch
    >>> vit = VisionTransformer(image_size=32, patch_size=8, width=64, layers=2, heads=4,
    ...                         position_embedding="sincos")
    >>> vit(torch.randn(2, 3, 32, 32)).shape, vit.out_dim
    (torch.Size([2, 64]), 64)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from reference_trainers.common.errors import TrainerError

__all__ = ["ModelConfigError", "TransformerBlock", "VisionTransformer", "run_blocks",
           "sincos_2d_position_embedding"]

PositionEmbedding = Literal["learned", "sincos"]


class ModelConfigError(TrainerError, ValueError):
    """A model preset name or architecture argument cannot be used."""


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + MLP(LN(x)); MLP is Linear-GELU-Linear.

    Parameters per block (width w, mlp_ratio r): 4w^2 + 4w (qkv, out) + 2 r w^2 + (r + 1) w
    (MLP) + 4w (two LayerNorms); the layout of CLIP's and timm's blocks, so counts match.
    Input and output (B, L, w) in the activation dtype. `causal=True` masks future positions.
    """

    def __init__(self, width: int, heads: int, *, mlp_ratio: float = 4.0, causal: bool = False,
                 norm_eps: float = 1e-5):
        super().__init__()
        if width % heads:
            raise ModelConfigError(f"width={width} is not divisible by heads={heads}; choose a "
                                   "width that is a multiple of the head count")
        self.heads = heads
        self.causal = causal
        hidden = int(width * mlp_ratio)
        self.ln_attn = nn.LayerNorm(width, eps=norm_eps)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln_mlp = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.ln_attn(x)).view(batch, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, head_dim)
        # SDPA picks flash / memory-efficient kernels on GPU; same maths as softmax(qk^T/sqrt d)v.
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.ln_mlp(x))


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, *, checkpointing: bool
               ) -> torch.Tensor:
    """Apply `blocks` in order. With `checkpointing` (and grad enabled) each block's activations
    are recomputed in backward instead of stored: about one block's activations held instead of
    all, for roughly one extra forward. Non-reentrant checkpointing, so outputs and gradients are
    those of the plain pass (blocks here hold no dropout or batch statistics)."""
    use = checkpointing and torch.is_grad_enabled()
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if use else block(x)
    return x


def sincos_2d_position_embedding(grid_size: int, width: int, temperature: float = 10000.0
                                 ) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings, MoCo v3's choice for ViT (their `vits.py`).

    Returns (grid_size**2, width) float32, patches in row-major order: a quarter of the channels
    are sin(x * omega), cos(x * omega), sin(y * omega), cos(y * omega) for the column x and the row
    y, with omega_d = temperature ** (-d / (width / 4)), d = 0 .. width/4 - 1.
    """
    if width % 4:
        raise ModelConfigError(f"sin-cos position embeddings need width divisible by 4, got "
                               f"width={width}; use position_embedding='learned' or pad width")
    quarter = width // 4
    omega = temperature ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid_size, dtype=torch.float64),
                                torch.arange(grid_size, dtype=torch.float64), indexing="ij")
    x_angles = cols.reshape(-1, 1) * omega  # (N, width/4)
    y_angles = rows.reshape(-1, 1) * omega
    table = torch.cat([x_angles.sin(), x_angles.cos(), y_angles.sin(), y_angles.cos()], dim=1)
    return table.float()


class VisionTransformer(nn.Module):
    """ViT image encoder: (B, in_channels, image_size, image_size) float -> (B, out_dim).

    out_dim is `output_dim` when given (a bias-free projection of the class token, as in CLIP),
    else `width` (the normalised class token; MoCo v3's projector sits on top).

    position_embedding: "learned" (a parameter, class token included) or "sincos" (a fixed
    buffer; the class token's entry is zero, as in MoCo v3). pre_norm: LayerNorm before the
    blocks (CLIP's `ln_pre`). patch_bias: bias in the patch conv (timm/MoCo v3 yes, CLIP no).
    freeze_patch_embed: keep the random patch projection fixed (MoCo v3's stop-grad conv1).
    norm_eps: LayerNorm epsilon (CLIP 1e-5, timm/MoCo v3 1e-6). grad_checkpointing: see
    `run_blocks`; switch later with `set_grad_checkpointing`.
    """

    def __init__(self, *, image_size: int = 224, patch_size: int = 16, width: int = 768,
                 layers: int = 12, heads: int = 12, mlp_ratio: float = 4.0,
                 output_dim: int | None = None, position_embedding: PositionEmbedding = "learned",
                 pre_norm: bool = False, patch_bias: bool = True,
                 freeze_patch_embed: bool = False, norm_eps: float = 1e-6,
                 in_channels: int = 3, grad_checkpointing: bool = False):
        super().__init__()
        if image_size % patch_size:
            raise ModelConfigError(f"image_size={image_size} is not a multiple of "
                                   f"patch_size={patch_size}; resize the images or pick a patch "
                                   "size that divides them")
        if position_embedding not in ("learned", "sincos"):
            raise ModelConfigError(f"position_embedding={position_embedding!r}; allowed: "
                                   "'learned', 'sincos'")
        self.image_size = image_size
        self.grid_size = image_size // patch_size
        self.width = width
        self.out_dim = output_dim if output_dim is not None else width
        self.grad_checkpointing = grad_checkpointing
        num_tokens = self.grid_size ** 2 + 1

        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size,
                                     bias=patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        if position_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        else:
            table = sincos_2d_position_embedding(self.grid_size, width)
            self.register_buffer(
                "pos_embed", torch.cat([torch.zeros(1, width), table])[None], persistent=True)
        self.ln_pre = nn.LayerNorm(width, eps=norm_eps) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, mlp_ratio=mlp_ratio, norm_eps=norm_eps)
            for _ in range(layers))
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.proj = nn.Linear(width, output_dim, bias=False) if output_dim is not None else None
        self._init_weights()
        if freeze_patch_embed:
            self.patch_embed.requires_grad_(False)

    def _init_weights(self) -> None:
        # timm / MoCo v3 style: truncated-normal(0.02) linears with zero bias; the patch conv
        # Xavier-uniform over its flattened (width, C*p*p) view; small random class token.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        fan_out, fan_in = self.patch_embed.weight.shape[0], self.patch_embed.weight[0].numel()
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(self.patch_embed.weight, -bound, bound)
        if self.patch_embed.bias is not None:
            nn.init.zeros_(self.patch_embed.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=0.02)
        else:
            nn.init.normal_(self.cls_token, std=1e-6)  # MoCo v3's class token init

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward (see `run_blocks`)."""
        self.grad_checkpointing = bool(enabled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ModelConfigError(
                f"images are {tuple(images.shape[-2:])}, this ViT was built for "
                f"{self.image_size}x{self.image_size}; resize (or build with that image_size)")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, width)
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)
        x = self.ln_pre(x)
        x = run_blocks(self.blocks, x, checkpointing=self.grad_checkpointing)
        cls_out = self.norm(x[:, 0])
        return self.proj(cls_out) if self.proj is not None else cls_out
