"""Expert-choice mixture of experts (Zhou et al. 2022) as used in MicroDiT.

Shapes: N batch, T tokens, D width, E experts, k tokens per expert, Hf expert hidden width.

Routing is per sample: ``probs = softmax(x @ W_gate)`` over the E experts; each expert picks the
k tokens with the highest probability for it, ``k = int(capacity * T / E)``; a token may be
picked by several experts or by none. Each expert is a bias-free GELU MLP ``w2(gelu(w1 x))``;
its outputs are scaled by the router probability and summed back into the token positions.

Dispatch and combine are an index_select and an index_add over token rows: memory and time are
linear in T, where the reference's dense one-hot (N, E, k, T) matrices are quadratic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def expert_capacity(num_tokens: int, num_experts: int, capacity: float) -> int:
    """Tokens per expert: int(capacity * T / E), at least 1 and at most T."""
    return min(num_tokens, max(1, int(capacity * num_tokens / num_experts)))


class ExpertChoiceMoE(nn.Module):
    """Expert-choice MoE layer with ``num_experts`` GELU experts of hidden width ``hidden``.

    Parameters keep the reference layout: ``w1`` (E, D, Hf), ``w2`` (E, Hf, D), ``gate`` Linear(D, E).
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, capacity: float) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.num_experts = num_experts
        self.capacity = capacity
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))

    def init_weights(self, std: float, out_std: float) -> None:
        """Truncated-normal init: ``std`` for the router and w1, ``out_std`` for w2."""
        nn.init.trunc_normal_(self.gate.weight, std=std)
        nn.init.trunc_normal_(self.w1, std=std)
        nn.init.trunc_normal_(self.w2, std=out_std)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router decision for x (N, T, D): gates (N, E, k) and token indices (N, E, k)."""
        k = expert_capacity(x.shape[1], self.num_experts, self.capacity)
        probs = self.gate(x).softmax(dim=-1)  # (N, T, E)
        gates, token_ids = probs.transpose(1, 2).topk(k, dim=-1)  # (N, E, k) each
        return gates, token_ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, D)."""
        gates, token_ids = self.route(x)  # (N, E, k)
        routed, rows = dispatch(x, token_ids)  # (E, N*k, D), (E*N*k,)
        hidden = F.gelu(torch.bmm(routed, self.w1))  # (E, N*k, Hf)
        return combine(torch.bmm(hidden, self.w2), gates, rows, x.shape)  # (N, T, D)


def dispatch(x: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather each expert's tokens: x (N, T, D), token_ids (N, E, k) -> routed (E, N*k, D) and the
    expert-major row indices (E*N*k,) into x viewed as (N*T, D)."""
    n, t, d = x.shape
    e, k = token_ids.shape[1:]
    offsets = torch.arange(n, device=x.device).view(n, 1, 1) * t
    rows = (token_ids + offsets).transpose(0, 1).reshape(e * n * k)
    return x.reshape(n * t, d).index_select(0, rows).view(e, n * k, d), rows


def combine(out: torch.Tensor, gates: torch.Tensor, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Scale expert outputs (E, N*k, D) by their gates (N, E, k) and sum them into the token rows
    they came from: -> (N, T, D) (tokens no expert picked get 0)."""
    n, t, d = shape
    e, nk = out.shape[:2]
    scaled = out * gates.transpose(0, 1).reshape(e, nk, 1).to(out.dtype)  # (E, N*k, D)
    return out.new_zeros(n * t, d).index_add(0, rows, scaled.view(e * nk, d)).view(n, t, d)
