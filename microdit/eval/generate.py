"""Loading a trained network from a run or checkpoint, and generating latents from caption
embeddings with a fixed seed per image (text-to-image, or image-to-image from an initial latent).

Shapes: N images, C latent channels, (H, W) latent size, L caption tokens, Dy caption width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from microdit.diffusion import edm_sample, guided_denoiser, karras_sigmas
from microdit.models import MicroDiT
from microdit.train import checkpoint as ckpt
from microdit.train.config import TrainConfig, stage_model_config


@dataclass
class LoadedModel:
    """A network ready for sampling, with the run config and the checkpoint it came from."""

    model: MicroDiT
    config: TrainConfig
    checkpoint: Path
    nimg: int
    ema: bool


def load_model(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> LoadedModel:
    """The network of a run folder (its latest checkpoint) or of a checkpoint folder; EMA weights
    when the checkpoint has them and ``use_ema``."""
    checkpoint = ckpt.resolve(path)
    run_dir = checkpoint.parent.parent
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {checkpoint} is not inside a microdit run folder")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(config_file)))
    state, meta = ckpt.load(checkpoint)
    stage = cfg.stages[min(meta["stage"], len(cfg.stages) - 1)]
    model = MicroDiT(stage_model_config(cfg, stage))
    ema = use_ema and state.get("ema") is not None
    model.load_state_dict(state["ema"] if ema else state["model"])
    return LoadedModel(model.to(device).eval(), cfg, checkpoint, meta["nimg"], ema)


def seeded_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape) standard normal noise, image i drawn on the CPU from ``seeds[i]`` alone (so an
    image does not depend on its batch, device or neighbours)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def generate(model: MicroDiT, y: torch.Tensor, seeds: list[int], sigma_data: float, sigma_min: float,
             sigma_max: float, rho: float, steps: int = 30, solver: str = "heun", cfg_scale: float = 5.0,
             y_mask: torch.Tensor | None = None, batch_size: int = 64, x_init: torch.Tensor | None = None,
             sigma_start: float | None = None) -> torch.Tensor:
    """Latents (N, C, H, W) float32 on the CPU for caption embeddings y (N, L, Dy).

    Classifier-free guidance against the zero caption (batched with the conditional half). With
    ``x_init`` (N, C, H, W) and ``sigma_start``, SDEdit: noise the initial latents to sigma_start
    and denoise from there.
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    top = sigma_start if x_init is not None else sigma_max
    sigmas = karras_sigmas(steps, sigma_min, top, rho, device)
    out = []
    for start in range(0, len(seeds), batch_size):
        part = slice(start, start + batch_size)
        yb = y[part].to(device, dtype)
        mask = None if y_mask is None else y_mask[part].to(device)
        noise = seeded_noise(seeds[part], (cfg.in_channels, *cfg.input_size)).to(device)
        den = guided_denoiser(model, yb, sigma_data, cfg_scale, torch.zeros_like(yb), mask, dtype=dtype)
        init = None if x_init is None else x_init[part].to(device)
        out.append(edm_sample(den, noise, sigmas, solver, x_init=init).float().cpu())
    return torch.cat(out)
