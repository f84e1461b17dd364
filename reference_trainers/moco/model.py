"""MoCo v3 (Chen, Xie and He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers"): backbones, projector and predictor MLPs, the momentum encoder and its cosine
momentum schedule.

    base encoder     = backbone -> projector            (trained by gradient)
    momentum encoder = EMA copy of backbone + projector (no gradient)
    q = predictor(base(x)),  k = momentum(x)
    loss = ctr(q1, k2) + ctr(q2, k1)                    (adapters.torch.moco_loss)

Any backbone works: an nn.Module mapping a (B, C, H, W) float batch to (B, out_dim) features,
with an integer attribute `out_dim`. The CPU presets use `SmallResNet` or `VitTiny` below; a
larger ViT (the GPU presets' ViT-S / ViT-B) is passed to `MoCo(backbone, ...)` the same way.

>>> import torch
>>> model = build_moco("resnet", width=8, dim=16, mlp_dim=32)
>>> x = torch.randn(4, 1, 28, 28)
>>> [tuple(t.shape) for t in model(x, x, momentum=0.99)]
[(4, 16), (4, 16), (4, 16), (4, 16)]
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from reference_trainers.common.errors import TrainerError

__all__ = ["BACKBONES", "MoCo", "SmallResNet", "VitTiny", "build_mlp", "build_moco",
           "moco_momentum"]


# == Backbones ====================================================================================
class _BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Identity() if stride == 1 and channels_in == channels_out else \
            nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                          nn.BatchNorm2d(channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet for 28 x 28 grayscale: a 3x3 stem (stride `stem_stride`), three stages of one
    basic block each (widths w, 2w, 4w; at 14, 7, 4 pixels with stride 2), global average
    pooling. (B, in_channels, 28, 28) float -> (B, 4w); out_dim = 4w."""

    def __init__(self, width: int = 32, in_channels: int = 1, stem_stride: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(_BasicBlock(width, width, 1),
                                    _BasicBlock(width, 2 * width, 2),
                                    _BasicBlock(2 * width, 4 * width, 2))
        self.out_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


def _sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """MoCo v3's fixed 2-D sine-cosine position embedding: (grid * grid, dim), dim % 4 == 0."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                            torch.arange(grid, dtype=torch.float32), indexing="ij")
    out_x, out_y = xs.flatten()[:, None] * omega, ys.flatten()[:, None] * omega
    return torch.cat([out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=1)


class VitTiny(nn.Module):
    """A small ViT for 28 x 28 grayscale: 4 x 4 patches (7 x 7 tokens) + a class token, fixed
    2-D sin-cos positions (as MoCo v3), pre-norm transformer blocks, the class token's final
    LayerNorm output as the feature. (B, in_channels, 28, 28) float -> (B, dim)."""

    def __init__(self, dim: int = 96, depth: int = 4, heads: int = 3, patch: int = 4,
                 image_size: int = 28, in_channels: int = 1) -> None:
        super().__init__()
        if image_size % patch or dim % 4 or dim % heads:
            raise TrainerError(f"VitTiny(image_size={image_size}, patch={patch}, dim={dim}, "
                               f"heads={heads}): need image_size % patch == 0, dim % 4 == 0 "
                               "and dim % heads == 0")
        grid = image_size // patch
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.cls_token, std=1e-6)
        pos = torch.cat([torch.zeros(1, dim), _sincos_2d(grid, dim)])[None]
        self.register_buffer("pos_embed", pos, persistent=False)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)          # (B, grid^2, dim)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        return self.norm(self.blocks(tokens + self.pos_embed))[:, 0]


# == Heads ========================================================================================
def build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, *,
              last_bn: bool) -> nn.Sequential:
    """MoCo v3's MLP: Linear (no bias) -> BN -> ReLU for every hidden layer, then a Linear
    (no bias) and, with last_bn, a BatchNorm without affine parameters (MoCo v3, sec. 3)."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        dim_in = input_dim if i == 0 else mlp_dim
        dim_out = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim_in, dim_out, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(dim_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dim_out, affine=False))
    return nn.Sequential(*layers)


# == MoCo v3 ======================================================================================
def moco_momentum(base_momentum: float, done_epochs: float, total_epochs: float) -> float:
    """MoCo v3's cosine momentum: m = 1 - (1 - m0) * (cos(pi * t) + 1) / 2 with t = done /
    total in fractional epochs, so m rises from m0 to 1 whatever each epoch's length."""
    t = min(max(done_epochs / max(total_epochs, 1e-12), 0.0), 1.0)
    return 1.0 - (1.0 - base_momentum) * (math.cos(math.pi * t) + 1.0) / 2.0


class MoCo(nn.Module):
    """MoCo v3 around any backbone with an `out_dim`.

    projector_layers: 2 for ResNets, 3 for ViTs (MoCo v3's choices); the predictor has 2.
    dim: the output dimension of projector and predictor (256 in MoCo v3); mlp_dim their
    hidden width (4096 in MoCo v3). The momentum encoder starts as an exact copy.
    """

    def __init__(self, backbone: nn.Module, *, dim: int = 256, mlp_dim: int = 4096,
                 projector_layers: int = 2) -> None:
        super().__init__()
        out_dim = getattr(backbone, "out_dim", None)
        if not isinstance(out_dim, int) or out_dim <= 0:
            raise TypeError(f"the backbone {type(backbone).__name__} needs a positive integer "
                            f"attribute `out_dim` (its feature size), got {out_dim!r}")
        self.base_encoder = nn.Sequential()
        self.base_encoder.add_module("backbone", backbone)
        self.base_encoder.add_module("projector", build_mlp(projector_layers, out_dim, mlp_dim,
                                                            dim, last_bn=True))
        self.predictor = build_mlp(2, dim, mlp_dim, dim, last_bn=False)
        self.momentum_encoder = copy.deepcopy(self.base_encoder)
        for param in self.momentum_encoder.parameters():
            param.requires_grad_(False)

    @property
    def backbone(self) -> nn.Module:
        return self.base_encoder.backbone

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen-feature face for evaluation: the base backbone's (B, out_dim) features."""
        return self.backbone(x)

    @torch.no_grad()
    def update_momentum_encoder(self, momentum: float) -> None:
        """k <- m * k + (1 - m) * q for every parameter (buffers are the encoder's own)."""
        base = [p.detach() for p in self.base_encoder.parameters()]
        ema = list(self.momentum_encoder.parameters())
        torch._foreach_mul_(ema, momentum)
        torch._foreach_add_(ema, base, alpha=1.0 - momentum)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor,
                momentum: float) -> tuple[torch.Tensor, ...]:
        """Two crops (B, C, H, W) -> (q1, q2, k1, k2), each (B, dim); keys carry no gradient.
        Updates the momentum encoder with `momentum` first, as MoCo v3 does."""
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            self.update_momentum_encoder(momentum)
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        return q1, q2, k1, k2


BACKBONES = ("resnet", "vit-tiny", "vit_small", "vit_base")


class ToInputSize(nn.Module):
    """Resize a (B, C, H, W) batch to a GPU backbone's square input and repeat grey channels to
    its count, so the paper's ViT-S / ViT-B presets can train on 28x28 Fashion-MNIST (a batch
    already at that size and channel count passes through untouched)."""

    def __init__(self, backbone: nn.Module, size: int, channels: int = 3) -> None:
        super().__init__()
        self.backbone, self.size, self.channels = backbone, size, channels
        self.out_dim = backbone.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x
        return self.backbone(x)


def build_moco(backbone: str = "resnet", *, width: int = 16, dim: int = 128,
               mlp_dim: int = 512, grad_checkpointing: bool = False) -> MoCo:
    """The CPU presets' MoCo: `resnet` (SmallResNet(width), 2-layer projector) or `vit-tiny`
    (VitTiny, 3-layer projector, as MoCo v3 gives ViTs); `vit_small` / `vit_base` are the
    paper's GPU presets (reference_trainers.models) with MoCo v3's ViT heads (256 / 4096,
    3-layer projector)."""
    if backbone in ("vit_small", "vit_base"):
        from reference_trainers.models import build_moco_backbone, moco_preset

        vit = build_moco_backbone(backbone, grad_checkpointing=grad_checkpointing)
        return MoCo(ToInputSize(vit, moco_preset(backbone).image_size), dim=256, mlp_dim=4096,
                    projector_layers=3)
    if backbone == "resnet":
        return MoCo(SmallResNet(width), dim=dim, mlp_dim=mlp_dim, projector_layers=2)
    if backbone == "vit-tiny":
        return MoCo(VitTiny(), dim=dim, mlp_dim=mlp_dim, projector_layers=3)
    raise TrainerError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}, or pass any "
                       "nn.Module with an `out_dim` to MoCo(backbone, ...)")
