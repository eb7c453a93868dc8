"""Frozen encoders behind one small interface, loaded lazily by name.

Autoencoders (``load_autoencoder``): ``sdxl`` (SDXL VAE, 4 channels, scale 0.13025), ``ostris16``
(``ostris/vae-kl-f8-d16``, 16 channels), ``pixel`` / ``pixel:F`` (identity / space-to-depth by F),
or any diffusers hub id or local folder (``ORG/REPO`` or ``ORG/REPO:SUBFOLDER``).

Text encoders (``load_text_encoder``): ``openclip:ARCH[:PRETRAINED]`` or ``openclip:hf-hub:ORG/REPO``
(paper: ``openclip:ViT-H-14-378-quickgelu:dfn5b``), ``offline[:DIM[:LENGTH[:SEED]]]`` (random token
table, no meaning) and ``minilm[:LENGTH]`` (pretrained all-MiniLM-L6-v2, 384 wide, bundled weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from microdit.encoders.autoencoder import Autoencoder, DiffusersAutoencoder, PixelAutoencoder
from microdit.encoders.text import MiniLMTextEncoder, OfflineTextEncoder, OpenClipTextEncoder, TextEncoder


@dataclass
class EncoderConfig:
    """The frozen encoders of a run, by name: used to prepare data, embed sample prompts and
    decode sample grids. The defaults are the CPU ones (pixel space by space-to-depth 2, the
    offline text encoder); the paper uses ``sdxl`` and ``openclip:ViT-H-14-378-quickgelu:dfn5b``."""

    autoencoder: str = "pixel:2"
    text_encoder: str = "offline:128:32"


_NAMED_VAES = {
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "vae", 0.13025),
    "ostris16": ("ostris/vae-kl-f8-d16", None, None),
}


def _int_fields(name: str, spec: str, count: int) -> list[int]:
    try:
        return [int(v) for v in spec.split(":")[:count]] if spec else []
    except ValueError:
        raise ValueError(f"encoder {name!r}: expected integer fields after the prefix, got {spec!r}") from None


def load_autoencoder(name: str, dtype: torch.dtype = torch.float32) -> Autoencoder:
    """The frozen autoencoder called ``name`` (see the module docstring)."""
    if name == "pixel" or name.startswith("pixel:"):
        fields = _int_fields(name, name[len("pixel:"):] if ":" in name else "", 1)
        return PixelAutoencoder(fields[0] if fields else 1)
    if name in _NAMED_VAES:
        source, subfolder, scale = _NAMED_VAES[name]
        return DiffusersAutoencoder.from_pretrained(source, subfolder, name=name, scale=scale, dtype=dtype)
    if Path(name).exists():
        return DiffusersAutoencoder.from_pretrained(name, name=name, dtype=dtype)
    if "/" in name:
        source, _, subfolder = name.partition(":")
        return DiffusersAutoencoder.from_pretrained(source, subfolder or None, name=name, dtype=dtype)
    raise ValueError(f"unknown autoencoder {name!r}: use sdxl, ostris16, pixel, pixel:F, a hub id ORG/REPO[:SUBFOLDER] "
                     "or an existing local folder")


def load_text_encoder(name: str, device: str | torch.device = "cpu") -> TextEncoder:
    """The frozen text encoder called ``name`` (see the module docstring)."""
    if name.startswith("openclip:"):
        return OpenClipTextEncoder.from_name(name[len("openclip:"):], device=device)
    if name == "offline" or name.startswith("offline:"):
        fields = _int_fields(name, name[len("offline:"):] if ":" in name else "", 3)
        return OfflineTextEncoder(*fields).to(device)
    if name == "minilm" or name.startswith("minilm:"):
        fields = _int_fields(name, name[len("minilm:"):] if ":" in name else "", 1)
        return MiniLMTextEncoder(*fields).to(device)
    raise ValueError(f"unknown text encoder {name!r}: use openclip:ARCH[:PRETRAINED], openclip:hf-hub:ORG/REPO or "
                     "offline[:DIM[:LENGTH[:SEED]]] or minilm[:LENGTH]")


def caption_length(name: str) -> int:
    """Caption tokens per image of the text encoder called ``name``, read from its name without
    loading it (openclip: 77; ``offline[:DIM[:LENGTH]]`` and ``minilm[:LENGTH]``: their defaults
    unless given): what a plan needs before any data is encoded."""
    if name.startswith("openclip:"):
        return 77
    if name == "offline" or name.startswith("offline:"):
        fields = _int_fields(name, name[len("offline:"):] if ":" in name else "", 3)
        return fields[1] if len(fields) > 1 else OfflineTextEncoder.__init__.__defaults__[1]
    if name == "minilm" or name.startswith("minilm:"):
        fields = _int_fields(name, name[len("minilm:"):] if ":" in name else "", 1)
        return fields[0] if fields else MiniLMTextEncoder.__init__.__defaults__[0]
    raise ValueError(f"unknown text encoder {name!r}")


__all__ = [
    "Autoencoder",
    "EncoderConfig",
    "DiffusersAutoencoder",
    "MiniLMTextEncoder",
    "OfflineTextEncoder",
    "OpenClipTextEncoder",
    "PixelAutoencoder",
    "TextEncoder",
    "caption_length",
    "load_autoencoder",
    "load_text_encoder",
]
