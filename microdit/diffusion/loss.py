"""EDM training loss with MicroDiT's masked reduction (caption dropout for CFG happens in the data
reader, :class:`microdit.data.LatentBatches`).

Shapes: N batch, C channels, H x W input, p patch, T = (H/p)(W/p) patches, K kept patches,
L caption tokens, Dy caption width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from microdit.diffusion.edm import EDMConfig, denoise, loss_weight, sample_sigma
from microdit.masking import keep_mask


def patch_loss(per_pixel: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-pixel loss (N, C, H, W) -> per-patch loss (N, T): mean over channels, then over each patch."""
    per_position = per_pixel.mean(dim=1, keepdim=True)  # (N, 1, H, W)
    return F.avg_pool2d(per_position, patch_size).flatten(1)  # (N, T), row-major like the tokens


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, T, p*p*C) in the network's token order (rows of patches, row-major)."""
    return rearrange(x, "n c (h p) (w q) -> n (h w) (p q c)", p=patch_size, q=patch_size)


def masked_reconstruction_loss(d: torch.Tensor, x_noisy: torch.Tensor, keep_ids: torch.Tensor,
                               patch_size: int) -> torch.Tensor:
    """MaskDiT's auxiliary loss (Zheng et al. 2023, the MAE term): per sample (N,), the squared
    error between the denoiser output ``d`` and the **noisy input** ``x_noisy`` = x0 + sigma n on
    the **masked** patches only, each target patch normalised by its own mean and (unbiased)
    standard deviation, averaged over the patch's values, then over the masked patches. It is not
    weighted by lambda(sigma)."""
    target = patchify(x_noisy, patch_size)  # (N, T, p*p*C)
    target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
    per_patch = (patchify(d, patch_size) - target).square().mean(dim=-1)  # (N, T)
    masked = (~keep_mask(keep_ids, *per_patch.shape)).to(per_patch.dtype)  # (N, T), 1 at masked patches
    return (per_patch * masked).sum(dim=1) / masked.sum(dim=1).clamp_min(1)


def masked_mean(per_patch: torch.Tensor, keep_ids: torch.Tensor | None) -> torch.Tensor:
    """Mean over the kept patches of each sample: (N, T), (N, K) -> (N,); all patches if None."""
    if keep_ids is None:
        return per_patch.mean(dim=1)
    return torch.gather(per_patch, 1, keep_ids).mean(dim=1)


def edm_loss(
    net: nn.Module,
    x0: torch.Tensor,
    y: torch.Tensor,
    edm: EDMConfig,
    patch_size: int,
    keep_ids: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sigma: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    mae_weight: float = 0.0,
) -> torch.Tensor:
    """Per-sample EDM loss (N,): lambda(sigma) (D(x0 + n; sigma) - x0)^2 averaged over the kept patches.

    Per-pixel loss -> mean over channels -> mean per patch -> mean over kept patches. The mean
    over the batch is the caller's (so it can also log per-sigma losses). ``sigma`` (N,) and
    ``noise`` (N, C, H, W) may be given (drawn by the caller); otherwise they are drawn here.
    ``mae_weight`` > 0 adds that weight times MaskDiT's auxiliary loss on the masked patches
    (:func:`masked_reconstruction_loss`; for a network that predicts every patch).
    """
    n = x0.shape[0]
    x0 = x0.to(torch.promote_types(x0.dtype, torch.float32))
    if sigma is None:
        sigma = sample_sigma(n, edm.P_mean, edm.P_std, generator, x0.device)  # (N,)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    sigma, noise = sigma.to(x0.dtype), noise.to(x0.dtype)
    x_noisy = x0 + noise * sigma.view(-1, 1, 1, 1)  # (N, C, H, W)
    d = denoise(net, x_noisy, sigma, y, edm.sigma_data, keep_ids=keep_ids, y_mask=y_mask)
    per_pixel = loss_weight(sigma, edm.sigma_data).view(-1, 1, 1, 1) * (d - x0) ** 2  # (N, C, H, W)
    per_patch = patch_loss(per_pixel, patch_size)  # (N, T)
    loss = masked_mean(per_patch, keep_ids)
    if mae_weight > 0 and keep_ids is not None:
        loss = loss + mae_weight * masked_reconstruction_loss(d, x_noisy, keep_ids, patch_size)
    return loss
