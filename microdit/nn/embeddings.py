"""Embedders: patch embedding (timm's), fixed 2-D sin-cos position embedding, timestep embedding.

Shapes: N batch, C channels, H x W input, h x w token grid (h = H / p), T = h * w tokens, D width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from torch import nn


def patch_embed(in_channels: int, dim: int, patch_size: int) -> PatchEmbed:
    """Non-overlapping p x p patches -> D-dim tokens by a strided convolution with bias (timm's
    ``PatchEmbed``, as the reference builds it, for any input size): (N, C, H, W) -> (N, T, D),
    tokens in row-major (h, w) order."""
    return PatchEmbed(img_size=None, patch_size=patch_size, in_chans=in_channels, embed_dim=dim, bias=True,
                      strict_img_size=False)


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) float64 positions -> (M, dim): sin half then cos half, frequencies 1 / 10000^(j / (dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(
    dim: int, grid: tuple[int, int], base_grid: tuple[int, int], interp_scale: float = 1.0
) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (T, dim) in float32 for a (h, w) token grid.

    Coordinates along each axis are ``arange(g) / (g / base) / interp_scale`` (base: the grid the
    model was configured for), so a larger grid is interpolated into the base range and
    ``interp_scale`` stretches it further (2.0 at 512 px after training at 256 px). The first
    half of the channels encodes the column (w) coordinate, the second half the row (h).
    """
    if dim % 4:
        raise ValueError(f"position embedding width must be divisible by 4, got {dim}")
    h, w = grid
    rows = torch.arange(h, dtype=torch.float64) / (h / base_grid[0]) / interp_scale
    cols = torch.arange(w, dtype=torch.float64) / (w / base_grid[1]) / interp_scale
    row_pos = rows[:, None].expand(h, w).reshape(-1)  # (T,)
    col_pos = cols[None, :].expand(h, w).reshape(-1)  # (T,)
    return torch.cat([_sincos_1d(dim // 2, col_pos), _sincos_1d(dim // 2, row_pos)], dim=1).float()


def timestep_sinusoid(c_noise: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) noise conditioning -> (N, dim) float32: cos half then sin half, max period 1e4."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=c_noise.device) / half)
    angles = c_noise.float()[:, None] * freqs[None, :]  # (N, dim/2)
    emb = torch.cat([angles.cos(), angles.sin()], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoid of c_noise (``freq_dim`` channels) -> Linear -> GELU(tanh) -> Linear."""

    def __init__(self, dim: int, freq_dim: int = 512) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N, D)."""
        emb = timestep_sinusoid(c_noise, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))
