"""EDM samplers: Karras sigma schedule, Euler and Heun (EDM Algorithm 2, with churn) and
classifier-free guidance with the conditional and unconditional halves in one batch.

The sampler state is float64; the denoiser is called in float32. Deterministic given a
``torch.Generator`` (for the initial noise and churn).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from microdit.diffusion.edm import denoise

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SOLVERS = ("euler", "heun")


@dataclass
class SamplerConfig:
    """How images are sampled: EDM ``solver`` over ``steps`` Karras noise levels, classifier-free
    guidance ``cfg_scale`` (1 = conditional only) and EDM's ``churn`` (S_churn; 0 = deterministic).
    The defaults are the paper's: Heun, 30 steps, CFG 5. A run's config holds one; the training
    grids, ``microdit-sample`` and ``microdit-eval`` all default to it."""

    solver: str = "heun"
    steps: int = 30
    cfg_scale: float = 5.0
    churn: float = 0.0

    def problems(self) -> list[str]:
        """One message per invalid field (empty when valid)."""
        out = []
        if self.solver not in SOLVERS:
            out.append(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.steps < 1:
            out.append(f"steps must be >= 1, got {self.steps}")
        if not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            out.append(f"cfg_scale must be a finite number >= 0 (1 = conditional only), got {self.cfg_scale}")
        if not math.isfinite(self.churn) or self.churn < 0:
            out.append(f"churn must be a finite number >= 0, got {self.churn}")
        return out

    def with_overrides(self, **fields) -> SamplerConfig:
        """This config with ``fields`` changed (e.g. from a command line), validated: ValueError
        naming every problem."""
        sampler = dataclasses.replace(self, **fields)
        found = sampler.problems()
        if found:
            raise ValueError("sampler: " + "; ".join(found))
        return sampler


# EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, sigma_N = 0
def karras_sigmas(
    num_steps: int, sigma_min: float, sigma_max: float, rho: float, device=None
) -> torch.Tensor:
    """(num_steps + 1,) float64 noise levels from sigma_max down to sigma_min, then 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    frac = i / max(num_steps - 1, 1)
    sigmas = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def guided_denoiser(
    net: nn.Module,
    y: torch.Tensor,
    sigma_data: float,
    cfg_scale: float = 1.0,
    y_uncond: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Denoiser:
    """A denoiser ``D(x, sigma)`` for the sampler from the network F and captions y (N, L, Dy).

    With ``y_uncond`` (the unconditional embedding, e.g. zeros), guidance is
    ``F_u + cfg_scale (F_c - F_u)`` with both halves in one batch of 2N. The float64 sampler
    state is cast to ``dtype`` (the network's parameter dtype) for the call.
    """
    if y_uncond is not None:
        y_both = torch.cat([y, y_uncond.expand_as(y)])  # (2N, L, Dy)
        mask_both = None if y_mask is None else torch.cat([y_mask, torch.ones_like(y_mask)])

    def denoise_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = x.to(dtype)
        s = sigma.to(dtype).reshape(1).expand(n)  # (N,)
        if y_uncond is None:
            return denoise(net, x, s, y, sigma_data, y_mask=y_mask).to(torch.float64)
        # D_u + w (D_c - D_u) = c_skip x + c_out (F_u + w (F_c - F_u)): both halves share x.
        d_c, d_u = denoise(net, torch.cat([x, x]), torch.cat([s, s]), y_both, sigma_data, y_mask=mask_both).chunk(2)
        return (d_u + cfg_scale * (d_c - d_u)).to(torch.float64)

    return denoise_fn


@torch.no_grad()
def edm_sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    solver: str = "heun",
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    generator: torch.Generator | None = None,
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """EDM Algorithm 2 from x_0 = noise * sigmas[0]; returns the float64 sample at sigma = 0.

    With ``x_init`` (image-to-image, SDEdit) the start is x_init + noise * sigmas[0], so pass the
    tail of a schedule starting at the chosen sigma_start.

    ``sigmas`` from :func:`karras_sigmas` (last entry 0). Heun adds its second-order correction
    on every step but the last (to sigma = 0). ``S_churn > 0`` adds stochasticity.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    sigmas = sigmas.to(noise.device, torch.float64)  # a schedule made on the CPU samples on any device
    num_steps = len(sigmas) - 1
    x = noise.to(torch.float64) * sigmas[0]
    if x_init is not None:
        x = x + x_init.to(torch.float64)
    for i in range(num_steps):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= float(t_cur) <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
            x = x + (t_hat**2 - t_cur**2).sqrt() * S_noise * eps
        d_cur = (x - denoiser(x, t_hat)) / t_hat
        x_next = x + (t_next - t_hat) * d_cur
        if solver == "heun" and i < num_steps - 1:
            d_next = (x_next - denoiser(x_next, t_next)) / t_next
            x_next = x + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x
