"""Frozen image autoencoders: images in [-1, 1] (N, 3, H, W) <-> scaled latents (N, C, H/f, W/f).

- ``PixelAutoencoder``: identity (f = 1) or space-to-depth by f (pixel-unshuffle), for CPU-scale
  runs in pixel space.
- ``DiffusersAutoencoder``: a diffusers ``AutoencoderKL`` (SDXL VAE, ostris 16-channel VAE, any hub
  id or local folder); latents are one posterior sample, ``(z - shift) * scale``.

Encoders are frozen (no gradients, eval mode) and never part of a checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from microdit.pretrained import HUB_CACHE, fetching


class Autoencoder(nn.Module):
    """Interface of a frozen autoencoder. Subclasses set ``name``, ``latent_channels``,
    ``downsample`` and ``scale`` and implement ``encode`` / ``decode``."""

    name: str
    latent_channels: int
    downsample: int
    scale: float

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Latent (C, h, w) of an H x W image."""
        if height % self.downsample or width % self.downsample:
            raise ValueError(f"autoencoder {self.name!r} needs image sides divisible by {self.downsample}, "
                             f"got {height} x {width}")
        return self.latent_channels, height // self.downsample, width // self.downsample

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> scaled latents (N, C, h, w)."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, C, h, w) -> images (N, 3, H, W), roughly in [-1, 1]."""
        raise NotImplementedError


class PixelAutoencoder(Autoencoder):
    """Pixel space: identity for factor 1, space-to-depth (pixel-unshuffle) by ``factor`` otherwise."""

    def __init__(self, factor: int = 1) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"pixel autoencoder factor must be >= 1, got {factor}")
        self.name = "pixel" if factor == 1 else f"pixel:{factor}"
        self.latent_channels = 3 * factor * factor
        self.downsample = factor
        self.scale = 1.0

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 3 f^2, H/f, W/f)."""
        self.latent_shape(images.shape[2], images.shape[3])
        return F.pixel_unshuffle(images, self.downsample) if self.downsample > 1 else images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, 3 f^2, h, w) -> (N, 3, h f, w f)."""
        return F.pixel_shuffle(latents, self.downsample) if self.downsample > 1 else latents


class DiffusersAutoencoder(Autoencoder):
    """A frozen diffusers ``AutoencoderKL``; latents = (posterior sample - shift) * scale."""

    def __init__(self, vae: nn.Module, name: str, scale: float | None = None, shift: float | None = None) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        config = vae.config
        self.name = name
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.scale = float(scale if scale is not None else config.scaling_factor)
        self.shift = float(shift if shift is not None else (getattr(config, "shift_factor", None) or 0.0))

    @classmethod
    def from_pretrained(cls, source: str, subfolder: str | None = None, name: str | None = None,
                        scale: float | None = None, dtype: torch.dtype = torch.float32) -> DiffusersAutoencoder:
        """Load an ``AutoencoderKL`` from a hub id or a local folder (diffusers imported lazily)."""
        from diffusers import AutoencoderKL

        with fetching(f"autoencoder {name or source} ({source}{f', subfolder {subfolder}' if subfolder else ''})",
                      HUB_CACHE, "give a local diffusers folder with its config.json (--autoencoder FOLDER)"):
            vae = AutoencoderKL.from_pretrained(source, subfolder=subfolder, torch_dtype=dtype)
        return cls(vae, name or source, scale=scale)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, C, H/8, W/8): one posterior sample, shifted and scaled."""
        self.latent_shape(images.shape[2], images.shape[3])
        dtype = next(self.vae.parameters()).dtype
        z = self.vae.encode(images.to(dtype)).latent_dist.sample(generator)
        return ((z.float() - self.shift) * self.scale)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) scaled latents -> (N, 3, 8h, 8w) images."""
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((latents / self.scale + self.shift).to(dtype)).sample.float()
