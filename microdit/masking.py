"""Token masking as pure tensor ops: sample which tokens to keep, gather them, scatter back.

Shapes: N batch, T = h * w tokens on an (h, w) grid, K kept tokens, D width.

Strategies:
- ``random``: per sample, an independent uniformly random subset of int(T * (1 - r)) tokens
  (the paper's default).
- ``block``: the grid is cut into b x b groups of patches; per sample a uniformly random subset
  of int(G * (1 - r)) of the G groups is kept, every token of a kept group is kept (paper Fig 5b).

Keep ids are sorted ascending, so ratio 0 keeps every token in order and the masked forward pass
equals the unmasked one exactly. ``sample_keep_ids`` returns None for ratio 0 (nothing to mask).
A :class:`MaskConfig` carries (ratio, strategy, block_size) as one object wherever masking is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STRATEGIES = ("random", "block")


@dataclass
class MaskConfig:
    """Which image tokens a training step drops: ``ratio`` r of the T tokens, chosen by
    ``strategy`` (``random``, or ``block`` with ``block_size`` b). The default is the paper's
    75% random masking (Figs 4-7, Table 2); ratio 0 trains unmasked."""

    ratio: float = 0.75
    strategy: str = "random"
    block_size: int = 1

    def problems(self, grid: tuple[int, int] | None = None) -> list[str]:
        """One message per invalid field (empty when valid); with ``grid`` (h, w), also whether
        the blocks tile it and at least one token is kept."""
        out = []
        if not 0.0 <= self.ratio < 1.0:
            out.append(f"ratio must be in [0, 1), got {self.ratio}")
        if self.strategy not in STRATEGIES:
            out.append(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.block_size < 1:
            out.append(f"block_size must be >= 1, got {self.block_size}")
        if out or grid is None:
            return out
        if self.strategy == "block" and (grid[0] % self.block_size or grid[1] % self.block_size):
            return [f"block_size {self.block_size} does not divide the token grid {tuple(grid)}"]
        if self.ratio > 0 and num_kept(grid, self) == 0:
            out.append(f"ratio {self.ratio} keeps no token of a {tuple(grid)} grid with {self.strategy} masking")
        return out

    def check(self, grid: tuple[int, int] | None = None) -> None:
        """Raise ValueError naming every problem (see :meth:`problems`)."""
        found = self.problems(grid)
        if found:
            raise ValueError("mask: " + "; ".join(found))


def num_kept(grid: tuple[int, int], mask: MaskConfig) -> int:
    """Number of tokens K kept out of T = h * w."""
    if mask.strategy == "random":
        return int(grid[0] * grid[1] * (1 - mask.ratio))
    b = mask.block_size
    groups = (grid[0] // b) * (grid[1] // b)
    return int(groups * (1 - mask.ratio)) * b * b


def sample_keep_ids(
    batch: int,
    grid: tuple[int, int],
    mask: MaskConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """Sorted indices (N, K) of the tokens to keep, or None when ``mask.ratio`` is 0."""
    mask.check(grid)
    if mask.ratio == 0:
        return None
    keep = num_kept(grid, mask)
    h, w = grid
    if mask.strategy == "random":
        noise = torch.rand(batch, h * w, generator=generator, device=device)  # (N, T)
        return noise.argsort(dim=1)[:, :keep].sort(dim=1).values  # (N, K)
    b = mask.block_size
    gh, gw = h // b, w // b
    kept_groups = keep // (b * b)
    noise = torch.rand(batch, gh * gw, generator=generator, device=device)  # (N, G)
    groups = noise.argsort(dim=1)[:, :kept_groups]  # (N, Kg)
    offsets = torch.arange(b, device=groups.device)
    rows = (groups // gw * b)[:, :, None, None] + offsets[None, None, :, None]  # (N, Kg, b, 1)
    cols = (groups % gw * b)[:, :, None, None] + offsets[None, None, None, :]  # (N, Kg, 1, b)
    return (rows * w + cols).reshape(batch, keep).sort(dim=1).values  # (N, K)


def gather_tokens(x: torch.Tensor, keep_ids: torch.Tensor) -> torch.Tensor:
    """Kept tokens of x: (N, T, D), (N, K) -> (N, K, D)."""
    return torch.gather(x, 1, keep_ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_tokens(x_kept: torch.Tensor, keep_ids: torch.Tensor, num_tokens: int, fill: float = 0.0) -> torch.Tensor:
    """Put kept tokens back in place, ``fill`` (the mask token) elsewhere: (N, K, D) -> (N, T, D)."""
    n, _, d = x_kept.shape
    out = x_kept.new_full((n, num_tokens, d), fill)
    return out.scatter(1, keep_ids.unsqueeze(-1).expand(-1, -1, d), x_kept)


def keep_mask(
    keep_ids: torch.Tensor | None, batch: int, num_tokens: int, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean (N, T), True at kept tokens (all True when ``keep_ids`` is None)."""
    if keep_ids is None:
        return torch.ones(batch, num_tokens, dtype=torch.bool, device=device)
    mask = torch.zeros(batch, num_tokens, dtype=torch.bool, device=keep_ids.device)
    return mask.scatter(1, keep_ids, True)
