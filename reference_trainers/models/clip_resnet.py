"""CLIP's modified ResNet image tower (Radford et al. 2021, section 2.4), used for RN50 / RN101.

Three changes from He et al.'s ResNet, all from the CLIP paper:
1. A stem of three 3x3 convolutions (the first with stride 2) and a 2x2 average pool, instead
   of one 7x7 convolution and a max pool.
2. Anti-aliased downsampling (Zhang 2019): every strided convolution becomes a stride-1
   convolution after a 2x2 average pool, in the main branch and in the shortcut.
3. Attention pooling instead of global average pooling: one multi-head attention step whose
   query is the mean of the final feature map, over that mean and all positions (with learned
   position embeddings), projected to the joint embedding.

Widths and depths: base width 64, bottleneck blocks [3, 4, 6, 3] (RN50) or [3, 4, 23, 3]
(RN101); final feature width 32 * 64 = 2048; 32 heads of 64 channels in the attention pool.

Example (a small config):
    >>> import torch
    >>> net = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=4, image_size=64,
    ...                      width=8)
    >>> net(torch.randn(2, 3, 64, 64)).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reference_trainers.models.vit import ModelConfigError

__all__ = ["AttentionPool2d", "Bottleneck", "ModifiedResNet"]


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                      bias=False),
            nn.BatchNorm2d(out_channels)]


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> (avg-pool if strided) -> 1x1 expand (x4), plus a shortcut that is
    avg-pool -> 1x1 conv -> BN whenever the stride or the width changes."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.branch = nn.Sequential(
            *_conv_bn(in_channels, planes, 1), nn.ReLU(inplace=True),
            *_conv_bn(planes, planes, 3), nn.ReLU(inplace=True),
            nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
            *_conv_bn(planes, out_channels, 1))
        self.shortcut: nn.Module = nn.Identity()
        if stride > 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                *_conv_bn(in_channels, out_channels, 1))
        # The last BN of the branch starts at zero so each block starts as (almost) the
        # identity (Goyal et al. 2017; CLIP does the same).
        nn.init.zeros_(self.branch[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


class AttentionPool2d(nn.Module):
    """(B, C, H, W) -> (B, output_dim): attention with the spatial mean as the only query.

    Parameters: position embeddings (H*W + 1, C), q/k/v projections C x C with bias, an output
    projection C x output_dim with bias. Only the mean token's output is needed, so only its
    query is computed (the keys and values cover all H*W + 1 tokens, as in CLIP).
    """

    def __init__(self, spatial_size: int, width: int, heads: int, output_dim: int):
        super().__init__()
        if width % heads:
            raise ModelConfigError(f"attention-pool width={width} is not divisible by "
                                   f"heads={heads}; pick a head count that divides it")
        self.spatial_size = spatial_size
        self.heads = heads
        self.positional_embedding = nn.Parameter(
            torch.randn(spatial_size ** 2 + 1, width) / width ** 0.5)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            nn.init.normal_(linear.weight, std=width ** -0.5)
            nn.init.zeros_(linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, width, height, breadth = features.shape
        if (height, breadth) != (self.spatial_size, self.spatial_size):
            raise ModelConfigError(
                f"feature map is {height}x{breadth}, the attention pool was built for "
                f"{self.spatial_size}x{self.spatial_size} (image_size / 32); feed images of the "
                "size the model was built for")
        tokens = features.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        head_dim = width // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, head_dim)
            return x.view(batch, x.shape[1], self.heads, head_dim).transpose(1, 2)

        query = split(self.q_proj(tokens[:, :1]))
        attended = F.scaled_dot_product_attention(
            query, split(self.k_proj(tokens)), split(self.v_proj(tokens)))
        return self.c_proj(attended.transpose(1, 2).reshape(batch, width))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: (B, 3, image_size, image_size) float -> (B, output_dim).

    layers: bottleneck blocks per stage; width: stem / first-stage width (the final feature
    width is 32 * width); heads: attention-pool heads (CLIP uses 32 * width / 64).
    No gradient checkpointing: recomputing a block in backward would update its BatchNorm
    running statistics a second time per step (open_clip does not checkpoint it either).
    """

    def __init__(self, *, layers: Sequence[int] = (3, 4, 6, 3), output_dim: int = 1024,
                 heads: int = 32, image_size: int = 224, width: int = 64):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ModelConfigError(f"layers={tuple(layers)}; expected four stage depths >= 1, "
                                   "e.g. (3, 4, 6, 3) for RN50")
        if image_size % 32:
            raise ModelConfigError(f"image_size={image_size} is not a multiple of 32 (the "
                                   "ResNet's total stride); use e.g. 224")
        self.image_size = image_size
        self.out_dim = output_dim
        half = width // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            *_conv_bn(half, half, 3), nn.ReLU(inplace=True),
            *_conv_bn(half, width, 3), nn.ReLU(inplace=True),
            nn.AvgPool2d(2))
        stages = []
        in_channels = width
        for index, depth in enumerate(layers):
            planes = width * 2 ** index
            blocks = [Bottleneck(in_channels, planes, stride=1 if index == 0 else 2)]
            in_channels = planes * Bottleneck.expansion
            blocks += [Bottleneck(in_channels, planes) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.attnpool = AttentionPool2d(image_size // 32, in_channels, heads, output_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.attnpool(self.stages(self.stem(images)))
