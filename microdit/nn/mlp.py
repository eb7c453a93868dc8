"""Feed-forward layers: SwiGLU (the dense FFN of MicroDiT), a bias-free GELU MLP (the dense
ablation and the expert shape) and the biased projection MLP of the embedders.

Shapes: N batch, T tokens, D width, Hf hidden width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return multiple * ((value + multiple - 1) // multiple)


def swiglu_hidden(dim: int, ratio: float, multiple_of: int) -> int:
    """Hidden width of a SwiGLU FFN: round_up(int(2/3 * int(dim * ratio)), multiple_of)."""
    return round_up(int(2 * int(dim * ratio) / 3), multiple_of)


def gelu_hidden(dim: int, ratio: float, multiple_of: int) -> int:
    """Hidden width of a GELU MLP (and of an MoE expert): round_up(int(dim * ratio), multiple_of)."""
    return round_up(int(dim * ratio), multiple_of)


class SwiGLU(nn.Module):
    """``w3(silu(w1 x) * w2 x)``, bias-free, with the gate and value projections fused into one
    matrix ``w12`` = [w1; w2] (Hf rows each): one GEMM of twice the width instead of two."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.w12 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def init_weights(self, std: float, out_std: float) -> None:
        """Truncated-normal init: ``std`` for the gate projection w1, ``out_std`` for the value
        projection w2 and the output w3 (as the reference)."""
        nn.init.trunc_normal_(self.w12.weight[:self.hidden], std=std)
        nn.init.trunc_normal_(self.w12.weight[self.hidden:], std=out_std)
        nn.init.trunc_normal_(self.w3.weight, std=out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, D)."""
        gate, value = self.w12(x).chunk(2, dim=-1)  # 2 x (N, T, Hf)
        return self.w3(F.silu(gate) * value)


class GeluMLP(nn.Module):
    """``w3(gelu_tanh(w1 x))``, bias-free: the dense GELU alternative to SwiGLU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def init_weights(self, std: float, out_std: float) -> None:
        """Truncated-normal init: ``std`` for the input projection, ``out_std`` for the output."""
        nn.init.trunc_normal_(self.w1.weight, std=std)
        nn.init.trunc_normal_(self.w3.weight, std=out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, D)."""
        return self.w3(F.gelu(self.w1(x), approximate="tanh"))


class ProjectionMLP(nn.Module):
    """``fc2(LN(gelu_tanh(fc1 x)))`` with biases on the Linears and a bias-free LayerNorm:
    the caption projection and the pooled-caption MLP."""

    def __init__(self, in_dim: int, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps, bias=False)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., D)."""
        return self.fc2(self.norm(F.gelu(self.fc1(x), approximate="tanh")))
