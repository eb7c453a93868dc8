"""Transformer blocks: the adaLN-zero DiT block, the caption pre-LN block and the final layer.

Shapes: N batch, T image tokens, L caption tokens, D block width, Dc conditioning width.
"""

from __future__ import annotations

import torch
from torch import nn

from microdit.nn.attention import CrossAttention, SelfAttention
from microdit.nn.mlp import init_ffn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``; x (N, T, D), shift/scale (N, 1, D)."""
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """DiT block with adaLN-zero conditioning on c (N, Dc) and cross-attention to captions:

    x += gate1 * SelfAttn(modulate(LN1(x), shift1, scale1))
    x += CrossAttn(LN2(x), y)                      (no modulation, no gate)
    x += gate2 * FFN(modulate(LN3(x), shift2, scale2))

    ``ffn`` is any (N, T, D) -> (N, T, D) module (SwiGLU, GELU MLP or expert-choice MoE).
    """

    def __init__(
        self, dim: int, cond_dim: int, attn_width: int, head_dim: int, ffn: nn.Module, eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps, bias=False)
        self.attn = SelfAttention(dim, attn_width, head_dim, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps, bias=False)
        self.cross_attn = CrossAttention(dim, head_dim, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps, bias=False)
        self.mlp = ffn
        self.ada_ln = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(cond_dim, 6 * dim))

    def init_weights(self, std: float, out_std: float) -> None:
        """Input projections trunc-normal(std), output projections trunc-normal(out_std), adaLN
        zero (so every gate is 0 and the block is the identity at init)."""
        self.attn.init_weights(std, out_std)
        self.cross_attn.init_weights(std, out_std)
        init_ffn(self.mlp, std, out_std)
        nn.init.zeros_(self.ada_ln[1].weight)
        nn.init.zeros_(self.ada_ln[1].bias)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (N, T, D), c (N, Dc), y (N, L, D), y_mask (N, L) or None -> (N, T, D)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada_ln(c).unsqueeze(1).chunk(6, dim=-1)  # 6 x (N, 1, D)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross_attn(self.norm2(x), y, y_mask)
        return x + gate2 * self.mlp(modulate(self.norm3(x), shift2, scale2))


class CaptionBlock(nn.Module):
    """Pre-LN transformer block over the caption tokens: self-attention (QK-norm) and SwiGLU."""

    def __init__(self, dim: int, head_dim: int, ffn: nn.Module, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps, bias=False)
        self.attn = SelfAttention(dim, dim, head_dim, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps, bias=False)
        self.mlp = ffn

    def init_weights(self, std: float) -> None:
        """Input projections trunc-normal(std); both output projections zero, so the block is
        the identity at init."""
        self.attn.init_weights(std, out_std=std)
        init_ffn(self.mlp, std, out_std=std)
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.mlp.fc2.weight)

    def forward(self, y: torch.Tensor, y_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, L, D) -> (N, L, D)."""
        y = y + self.attn(self.norm1(y), y_mask)
        return y + self.mlp(self.norm2(y))


class FinalLayer(nn.Module):
    """LN -> adaLN (shift, scale from c) -> Linear(D -> p*p*C)."""

    def __init__(self, dim: int, out_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, bias=False)
        self.ada_ln = nn.Sequential(nn.GELU(approximate="tanh"), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (N, T, D), c (N, D) -> (N, T, p*p*C)."""
        shift, scale = self.ada_ln(c).unsqueeze(1).chunk(2, dim=-1)  # 2 x (N, 1, D)
        return self.linear(modulate(self.norm(x), shift, scale))
