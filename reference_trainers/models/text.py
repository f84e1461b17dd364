"""CLIP's text tower (Radford et al. 2021, section 2.4): a 12-layer, width-512, 8-head causal
transformer over byte-pair tokens (vocabulary 49,408, context 77), read at the <eot> token.

The defaults assume CLIP's BPE tokenizer (open_clip's `tokenize`, or any tokenizer with the same
ids): <eot> is id 49407, the largest id. Pass `eot_id` for another tokenizer.

Example (a small config; `CLIPTextTransformer()` builds the full tower):
    >>> import torch
    >>> text = CLIPTextTransformer(vocab_size=100, context_length=16, width=32, layers=2,
    ...                            heads=4, embed_dim=24, eot_id=99)
    >>> tokens = torch.tensor([[5, 6, 99, 0], [7, 99, 0, 0]])
    >>> text(tokens).shape
    torch.Size([2, 24])
"""

from __future__ import annotations

import torch
from torch import nn

from reference_trainers.models.vit import ModelConfigError, TransformerBlock, run_blocks

__all__ = ["CLIPTextTransformer"]


class CLIPTextTransformer(nn.Module):
    """Token + learned position embeddings, `layers` pre-LN causal blocks, a final LayerNorm,
    the hidden state at each row's <eot>, a bias-free projection to `embed_dim`.

    Input (B, L) int64 with L <= context_length; output (B, embed_dim), not normalised (the CLIP
    wrapper normalises). The <eot> position is the first occurrence of `eot_id` in a row, else
    the last position (a row truncated by its tokenizer). Under the causal mask a row's output
    depends only on tokens up to its <eot>, so padding after it is harmless.

    trim_to_longest: drop columns after the batch's last <eot> before the blocks. Exact, and
    cheaper for short captions, but it makes the sequence length vary per batch (one host sync,
    and torch.compile recompiles for new lengths), so it is off by default here.
    Full size: 63,428,096 parameters at embed_dim 512 (what open_clip lists as 63.43M).
    """

    def __init__(self, *, vocab_size: int = 49408, context_length: int = 77, width: int = 512,
                 layers: int = 12, heads: int = 8, embed_dim: int = 512, eot_id: int = 49407,
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-5, trim_to_longest: bool = False,
                 grad_checkpointing: bool = False):
        super().__init__()
        if not 0 <= eot_id < vocab_size:
            raise ModelConfigError(f"eot_id={eot_id} is outside the vocabulary [0, "
                                   f"{vocab_size}); pass the tokenizer's end-of-text id")
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.eot_id = eot_id
        self.out_dim = embed_dim
        self.trim_to_longest = trim_to_longest
        self.grad_checkpointing = grad_checkpointing
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, mlp_ratio=mlp_ratio, causal=True, norm_eps=norm_eps)
            for _ in range(layers))
        self.ln_final = nn.LayerNorm(width, eps=norm_eps)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self._init_weights(width, layers)

    def _init_weights(self, width: int, layers: int) -> None:
        # CLIP's scheme: embeddings N(0, 0.02) and N(0, 0.01); attention and MLP input weights
        # ~ width^-0.5; output weights of each residual branch scaled by (2 * layers)^-0.5 so the
        # residual stream's variance does not grow with depth.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        residual_std = width ** -0.5 * (2 * layers) ** -0.5
        for block in self.blocks:
            assert isinstance(block, TransformerBlock)
            nn.init.normal_(block.qkv.weight, std=width ** -0.5)
            nn.init.normal_(block.out.weight, std=residual_std)
            nn.init.normal_(block.mlp[0].weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp[2].weight, std=residual_std)
            for linear in (block.qkv, block.out, block.mlp[0], block.mlp[2]):
                nn.init.zeros_(linear.bias)
        nn.init.normal_(self.proj.weight, std=width ** -0.5)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward (see `vit.run_blocks`)."""
        self.grad_checkpointing = bool(enabled)

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 -> (B,) int64: index of each row's first <eot>, else L - 1."""
        is_eot = tokens == self.eot_id
        first = is_eot.int().argmax(dim=1)
        return torch.where(is_eot.any(dim=1), first, torch.full_like(first, tokens.shape[1] - 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ModelConfigError(
                f"tokens have shape {tuple(tokens.shape)}; expected (B, L) with L <= "
                f"context_length={self.context_length}; tokenize with that context length")
        eot = self.eot_positions(tokens)
        if self.trim_to_longest and len(eot):
            tokens = tokens[:, : int(eot.max()) + 1]
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = run_blocks(self.blocks, x, checkpointing=self.grad_checkpointing)
        x = self.ln_final(x)
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eot])
