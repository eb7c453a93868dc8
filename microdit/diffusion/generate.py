"""Text-to-image generation with a fixed seed per image: caption embeddings -> latents through
the EDM sampler and classifier-free guidance (or image-to-image from an initial latent, SDEdit).

Shapes: N images, C latent channels, (H, W) latent size, L caption tokens, Dy caption width.
"""

from __future__ import annotations

import torch
from torch import nn

from microdit.diffusion.edm import EDMConfig
from microdit.diffusion.samplers import SamplerConfig, edm_sample, guided_denoiser, karras_sigmas
from microdit.progress import progress


def seeded_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape) standard normal noise, image i drawn on the CPU from ``seeds[i]`` alone (so an
    image does not depend on its batch, device or neighbours)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def generate(model: nn.Module, y: torch.Tensor, seeds: list[int], edm: EDMConfig, sampler: SamplerConfig,
             y_mask: torch.Tensor | None = None, batch_size: int = 64, x_init: torch.Tensor | None = None,
             sigma_start: float | None = None, show_progress: bool = False) -> torch.Tensor:
    """Latents (N, C, H, W) float32 on the CPU for caption embeddings y (N, L, Dy) from the
    network ``model`` (a :class:`~microdit.models.MicroDiT`: its ``cfg`` gives the latent shape).

    Classifier-free guidance against the zero caption (batched with the conditional half). With
    ``x_init`` (N, C, H, W) and ``sigma_start``, SDEdit: noise the initial latents to sigma_start
    and denoise from there. With ``sampler.churn`` > 0 the extra noise of a batch is drawn from
    its first image's seed, so such an image is reproducible with the same ``batch_size``.
    ``show_progress``: a progress bar over the batches.
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    top = sigma_start if x_init is not None else edm.sigma_max
    sigmas = karras_sigmas(sampler.steps, edm.sigma_min, top, edm.rho, device)
    out = []
    for start in progress(range(0, len(seeds), batch_size), desc="sample", unit="batch", enabled=show_progress):
        part = slice(start, start + batch_size)
        yb = y[part].to(device, dtype)
        mask = None if y_mask is None else y_mask[part].to(device)
        noise = seeded_noise(seeds[part], (cfg.in_channels, *cfg.input_size)).to(device)
        den = guided_denoiser(model, yb, edm.sigma_data, sampler.cfg_scale, torch.zeros_like(yb), mask, dtype=dtype)
        init = None if x_init is None else x_init[part].to(device)
        churn = torch.Generator(device).manual_seed(seeds[start]) if sampler.churn > 0 else None
        out.append(edm_sample(den, noise, sigmas, sampler.solver, S_churn=sampler.churn, generator=churn,
                              x_init=init).float().cpu())
    return torch.cat(out)
