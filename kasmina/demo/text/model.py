"""The text task's host: a small byte-level causal transformer language model.

Pre-norm GPT blocks (causal self-attention, then a GELU MLP ``mlp_ratio`` times the width,
each on a residual path), learned positions, vocabulary 256 (one token per byte). Written out here, not
taken from ``transformers``, so the main job needs nothing beyond torch; the same sites
on a Hugging Face GPT-2 are covered in docs/architectures.md.

Its seed sites are whole blocks (a seed takes the block's input and adds to its output:
a parallel attention or MLP branch at that depth) and the output projection ``head``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

VOCABULARY = 256
SITES = ("blocks.0", "blocks.1", "head")


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ByteLM(nn.Module):
    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4, context: int = 128,
                 mlp_ratio: int = 4) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.context = context
        self.embed = nn.Embedding(VOCABULARY, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCABULARY)

    def forward(self, ids: Tensor) -> Tensor:
        """Logits (B, T, 256) for byte ids (B, T), T <= context."""
        positions = self.position.weight[: ids.shape[1]]
        x = self.embed(ids) + positions
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
