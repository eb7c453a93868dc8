"""Token masking as pure tensor ops: sample which tokens to keep, gather them, scatter back.

Shapes: N batch, T = h * w tokens on an (h, w) grid, K kept tokens, D width.

Strategies:
- ``random``: per sample, an independent uniformly random subset of int(T * (1 - r)) tokens
  (the paper's default).
- ``block``: the grid is cut into b x b groups of patches; per sample a uniformly random subset
  of int(G * (1 - r)) of the G groups is kept, every token of a kept group is kept (paper Fig 5b).

Keep ids are sorted ascending, so ratio 0 keeps every token in order and the masked forward pass
equals the unmasked one exactly. ``sample_keep_ids`` returns None for ratio 0 (nothing to mask).
"""

from __future__ import annotations

import torch

STRATEGIES = ("random", "block")


def check_mask_args(grid: tuple[int, int], ratio: float, strategy: str, block_size: int) -> None:
    """Raise ValueError naming the bad argument if (grid, ratio, strategy, block_size) is invalid."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    if strategy not in STRATEGIES:
        raise ValueError(f"mask strategy must be one of {STRATEGIES}, got {strategy!r}")
    if block_size < 1:
        raise ValueError(f"mask block_size must be >= 1, got {block_size}")
    if strategy == "block" and (grid[0] % block_size or grid[1] % block_size):
        raise ValueError(f"block masking with block_size {block_size} needs a token grid divisible by it, got {grid}")


def num_kept(grid: tuple[int, int], ratio: float, strategy: str = "random", block_size: int = 1) -> int:
    """Number of tokens K kept out of T = h * w."""
    check_mask_args(grid, ratio, strategy, block_size)
    if strategy == "random":
        return int(grid[0] * grid[1] * (1 - ratio))
    groups = (grid[0] // block_size) * (grid[1] // block_size)
    return int(groups * (1 - ratio)) * block_size * block_size


def sample_keep_ids(
    batch: int,
    grid: tuple[int, int],
    ratio: float,
    strategy: str = "random",
    block_size: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """Sorted indices (N, K) of the tokens to keep, or None when ``ratio`` is 0."""
    keep = num_kept(grid, ratio, strategy, block_size)
    if ratio == 0:
        return None
    if keep == 0:
        raise ValueError(f"mask ratio {ratio} keeps no token of a {grid} grid with {strategy} masking")
    h, w = grid
    if strategy == "random":
        noise = torch.rand(batch, h * w, generator=generator, device=device)  # (N, T)
        return noise.argsort(dim=1)[:, :keep].sort(dim=1).values  # (N, K)
    b = block_size
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
