"""EDM (Karras et al. 2022, arXiv 2206.00364) preconditioning as pure functions in the paper's symbols.

Everything here runs in float32 (or float64 for the sampler); only the network F may run under
autocast. Equation / table references are to the EDM paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EDMConfig:
    """EDM hyper-parameters as used by MicroDiT (sigma_data 0.9, not EDM's 0.5)."""

    sigma_data: float = 0.9
    P_mean: float = -0.6
    P_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def problems(self) -> list[str]:
        """One message per invalid field (empty when valid)."""
        out = [f"{k} must be > 0, got {getattr(self, k)}"
               for k in ("sigma_data", "P_std", "sigma_min", "sigma_max", "rho") if getattr(self, k) <= 0]
        if self.sigma_min >= self.sigma_max:
            out.append(f"sigma_min ({self.sigma_min}) must be < sigma_max ({self.sigma_max})")
        return out


# EDM Table 1, "Skip scaling" c_skip(sigma) = sigma_data^2 / (sigma^2 + sigma_data^2)
def c_skip(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Weight of the noisy input in the denoiser."""
    return sigma_data**2 / (sigma**2 + sigma_data**2)


# EDM Table 1, "Output scaling" c_out(sigma) = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)
def c_out(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Weight of the network output in the denoiser."""
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


# EDM Table 1, "Input scaling" c_in(sigma) = 1 / sqrt(sigma^2 + sigma_data^2)
def c_in(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Scale that gives the network an input of unit variance."""
    return 1 / (sigma**2 + sigma_data**2).sqrt()


# EDM Table 1, "Noise cond." c_noise(sigma) = ln(sigma) / 4
def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """Noise-level conditioning of the network."""
    return sigma.log() / 4


# EDM Table 1, "Loss weighting" lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2
def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma): makes the effective training target of F unit-variance at every sigma."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


# EDM Table 1, "Noise distribution" ln(sigma) ~ N(P_mean, P_std^2)
def sample_sigma(
    batch: int, P_mean: float, P_std: float, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """(N,) float32 training noise levels from the log-normal distribution."""
    return (torch.randn(batch, generator=generator, device=device) * P_std + P_mean).exp()


def denoise(
    net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor, sigma_data: float, **net_kwargs
) -> torch.Tensor:
    """D(x; sigma, y) = c_skip x + c_out F(c_in x, c_noise, y) (EDM eq. 7).

    x (N, C, H, W) noisy input, sigma (N,); ``net_kwargs`` go to F (keep_ids, y_mask). The
    preconditioning runs in x's precision, at least float32, whatever F's autocast dtype.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x.to(dtype)
    sigma = sigma.to(dtype)
    s = sigma.reshape(-1, 1, 1, 1)  # (N, 1, 1, 1)
    f = net(c_in(s, sigma_data) * x, c_noise(sigma), y, **net_kwargs).to(dtype)
    return c_skip(s, sigma_data) * x + c_out(s, sigma_data) * f
