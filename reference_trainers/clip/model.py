"""A small two-tower CLIP for the CPU preset, and the contract any CLIP model must meet.

The trainer needs only three things of a model (see `check_clip_model`): `encode_image`,
`encode_text` and a `logit_scale` parameter holding log(scale), as in CLIP (Radford et al.
2021, section 2.5) and open_clip. An open_clip model therefore drops in for ours unchanged.

Ours: `ImageCNN` (three conv blocks over 28x28 grayscale) and `TextTransformer` (pre-LN
causal transformer read at the <eot> token), joined by `CLIP` (reference_trainers/models/
clip.py, with `check_clip_model`; both re-exported here). `build_cpu_clip` is the cpu preset.

Example:
    >>> import torch
    >>> model = build_cpu_clip(vocab_size=100, eot_id=2)
    >>> images, tokens = torch.randn(4, 1, 28, 28), torch.full((4, 24), 2)
    >>> image_features, text_features, scale = model(images, tokens)
    >>> image_features.shape, text_features.shape, round(scale.item(), 2)
    (torch.Size([4, 128]), torch.Size([4, 128]), 14.29)
"""

from __future__ import annotations

import torch
from torch import nn

from reference_trainers.models.clip import CLIP, check_clip_model
from reference_trainers.models.vit import TransformerBlock

__all__ = ["CLIP", "ImageCNN", "TextTransformer", "build_cpu_clip", "check_clip_model"]


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # Stride 2 rather than conv + pool: same receptive-field growth at a quarter of the FLOPs.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImageCNN(nn.Module):
    """Image tower: three conv3x3-BN-ReLU blocks (stride 2: 28 -> 14 -> 7 -> 4), channels
    width, 2*width, 4*width; global average pool; linear to `embed_dim`.

    Input (B, in_channels, H, W) float32 (28x28 for Fashion-MNIST); output (B, embed_dim)
    float32, not normalised (CLIP normalises).
    """

    def __init__(self, in_channels: int = 1, width: int = 32, embed_dim: int = 128):
        super().__init__()
        self.blocks = nn.Sequential(
            _conv_block(in_channels, width),
            _conv_block(width, 2 * width),
            _conv_block(2 * width, 4 * width),
        )
        self.proj = nn.Linear(4 * width, embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.blocks(images).mean(dim=(2, 3)))


class TextTransformer(nn.Module):
    """Text tower: token + learned positional embeddings, `layers` pre-LN causal blocks, a final
    LayerNorm, the hidden state at each sequence's <eot> token, a linear projection.

    Input (B, L) int64 token ids with L <= context_length; output (B, embed_dim) float32, not
    normalised. The <eot> position is the first occurrence of `eot_id` in each row; a row
    without one (a tokenizer that truncated it away) is read at its last position. With the
    causal mask the output depends only on the tokens up to and including <eot>, so columns
    after the batch's last <eot> are never computed. mlp_ratio: MLP hidden width / width.
    """

    def __init__(self, vocab_size: int, context_length: int = 24, width: int = 128,
                 layers: int = 2, heads: int = 4, embed_dim: int = 128, *, eot_id: int,
                 mlp_ratio: int = 4):
        super().__init__()
        self.eot_id = eot_id
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, mlp_ratio=mlp_ratio, causal=True)
            for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 -> (B,) int64: index of each row's first <eot>, else L - 1."""
        is_eot = tokens == self.eot_id
        first = is_eot.int().argmax(dim=1)
        return torch.where(is_eot.any(dim=1), first, tokens.shape[1] - 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"tokens have length {tokens.shape[1]}, longer than context_length="
                             f"{self.context_length}; tokenize with that context length")
        eot = self.eot_positions(tokens)
        # Under the causal mask nothing after the batch's last <eot> reaches an output, so those
        # columns are cut: exact, and short captions cost what they are long (one host sync).
        tokens = tokens[:, : int(eot.max()) + 1] if len(eot) else tokens
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eot])


def build_cpu_clip(vocab_size: int, eot_id: int, context_length: int = 24,
                   embed_dim: int = 128) -> CLIP:
    """The cpu preset's CLIP: ImageCNN(width=32) and a 2-layer, width-64, 4-head text
    transformer (a 64-wide text tower is ample for the ~70-word caption vocabulary and costs a
    third of a 128-wide one), both projecting to `embed_dim`.

    Measured (torch 2.13 CPU, 2 threads, 2-core Intel Xeon, default arguments, vocab 66):
    223,457 parameters (64 per vocabulary word); one AdamW training step on a batch of 256
    (both towers, forward + symmetric CLIP loss + backward + update) took 50 ms (best of 40;
    median 59 ms with other jobs sharing the cores) on Fashion-MNIST captions, whose <eot>
    sits at position <= 12, and 71 ms (best of 40) with all 24 token positions in use. The
    image tower alone (forward + backward) took 24 ms. Timed by looping over one fixed batch
    (random images, real captions from common.captions and common.tokenizer).
    """
    return CLIP(
        ImageCNN(in_channels=1, width=32, embed_dim=embed_dim),
        TextTransformer(vocab_size, context_length=context_length, width=64, layers=2,
                        heads=4, embed_dim=embed_dim, eot_id=eot_id),
    )
