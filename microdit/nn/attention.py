"""Multi-head self- and cross-attention with QK-norm, through ``scaled_dot_product_attention``.

Shapes: N batch, T query tokens, L context (caption) tokens, D model width, W attention width,
H heads, hd head dim (W = H * hd).

QK-norm is a non-affine LayerNorm over the whole query (and key) vector of all heads together,
as in MicroDiT. Attention has no mask unless a key-padding mask is given (the reference attends
caption padding; ``key_padding_mask`` makes masking it an option).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION_BACKENDS = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
                      "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """A context that restricts ``scaled_dot_product_attention`` to one backend (``auto``: torch
    picks the fastest that supports the inputs). A backend that cannot run the inputs fails
    loudly inside the context rather than falling back."""
    if name == "auto":
        return contextlib.nullcontext()
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend {name!r} is not one of {('auto', *ATTENTION_BACKENDS)}")
    return sdpa_kernel(ATTENTION_BACKENDS[name])


def check_attention_backend(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    """Run one tiny attention with backend ``name`` on ``device``/``dtype``; raise a ValueError
    naming the backend and the device if it cannot run there (e.g. ``efficient`` on CPU)."""
    q = torch.zeros(1, 1, 2, head_dim, device=device, dtype=dtype)
    try:
        with attention_backend(name):
            F.scaled_dot_product_attention(q, q, q)
    except RuntimeError as err:
        raise ValueError(f"attention backend {name!r} cannot run on {device} in {dtype} with head_dim {head_dim} "
                         f"({str(err).splitlines()[0]}); use 'auto' or one of {tuple(ATTENTION_BACKENDS)} that "
                         "this device supports") from None


def qk_norm(t: torch.Tensor, eps: float) -> torch.Tensor:
    """Non-affine LayerNorm over the last (all-heads) dimension."""
    return F.layer_norm(t, (t.shape[-1],), eps=eps)


def multi_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of q (N, T, W) over k, v (N, L, W) with ``heads`` heads; returns (N, T, W).

    ``key_padding_mask`` (N, L) is True where a key may be attended.
    """
    n, t, w = q.shape
    length = k.shape[1]
    q = q.view(n, t, heads, w // heads).transpose(1, 2)  # (N, H, T, hd)
    k = k.view(n, length, heads, w // heads).transpose(1, 2)  # (N, H, L, hd)
    v = v.view(n, length, heads, w // heads).transpose(1, 2)  # (N, H, L, hd)
    attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # (N, 1, 1, L)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (N, H, T, hd)
    return out.transpose(1, 2).reshape(n, t, w)  # (N, T, W)


class SelfAttention(nn.Module):
    """Self-attention of width ``width`` (may differ from the model width ``dim``: layer-wise
    scaling) with one fused bias-free qkv projection and QK-norm."""

    def __init__(self, dim: int, width: int, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if width % head_dim:
            raise ValueError(f"attention width {width} is not divisible by head_dim {head_dim}")
        self.heads = width // head_dim
        self.eps = eps
        self.qkv = nn.Linear(dim, 3 * width, bias=False)
        self.proj = nn.Linear(width, dim, bias=False)

    def init_weights(self, std: float, out_std: float) -> None:
        """Truncated-normal init: ``std`` for the qkv projection, ``out_std`` for the output."""
        nn.init.trunc_normal_(self.qkv.weight, std=std)
        nn.init.trunc_normal_(self.proj.weight, std=out_std)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, T, D) -> (N, T, D)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (N, T, W)
        out = multi_head_attention(qk_norm(q, self.eps), qk_norm(k, self.eps), v, self.heads, key_padding_mask)
        return self.proj(out)


class CrossAttention(nn.Module):
    """Cross-attention from image tokens to caption tokens, full width ``dim``, QK-norm,
    a query projection and one fused key/value projection (bias-free)."""

    def __init__(self, dim: int, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"cross-attention width {dim} is not divisible by head_dim {head_dim}")
        self.heads = dim // head_dim
        self.eps = eps
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def init_weights(self, std: float, out_std: float) -> None:
        """Truncated-normal init: ``std`` for the q and kv projections, ``out_std`` for the output."""
        nn.init.trunc_normal_(self.q.weight, std=std)
        nn.init.trunc_normal_(self.kv.weight, std=std)
        nn.init.trunc_normal_(self.proj.weight, std=out_std)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (N, T, D), context (N, L, D) -> (N, T, D)."""
        k, v = self.kv(context).chunk(2, dim=-1)  # 2 x (N, L, D)
        q = self.q(x)  # (N, T, D)
        out = multi_head_attention(qk_norm(q, self.eps), qk_norm(k, self.eps), v, self.heads, key_padding_mask)
        return self.proj(out)
