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

    def problems(self) -> list[str]:
        """One message per name that names no encoder (checked without loading either)."""
        out = []
        for key, check in (("autoencoder", autoencoder_kind), ("text_encoder", _text_fields)):
            try:
                check(getattr(self, key))
            except ValueError as err:
                out.append(f"{key}: {err}")
        return out


_NAMED_VAES = {
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "vae", 0.13025),
    "ostris16": ("ostris/vae-kl-f8-d16", None, None),
}


# The encoders named by a prefix and integer fields: the form, and each field's name and least value.
_FORMS = {"pixel": ("pixel[:F]", (("F", 1),)),
          "offline": ("offline[:DIM[:LENGTH[:SEED]]]", (("DIM", 1), ("LENGTH", 1), ("SEED", 0))),
          "minilm": ("minilm[:LENGTH]", (("LENGTH", 1),))}


def _int_fields(name: str) -> tuple[str, list[int]] | None:
    """(prefix, its integer fields) of an encoder name of a :data:`_FORMS` form (None: another
    kind of name); ValueError naming the form where a field is missing, not an integer, too small
    or one too many."""
    prefix = name.split(":", 1)[0]
    if prefix not in _FORMS:
        return None
    form, fields = _FORMS[prefix]
    parts = name.split(":")[1:]
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = None
    if values is None or len(values) > len(fields) or any(v < low for v, (_, low) in zip(values, fields, strict=False)):
        limits = ", ".join(f"{field} >= {low}" for field, low in fields)
        raise ValueError(f"encoder {name!r}: expected {form} with integer fields ({limits})")
    return prefix, values


def autoencoder_kind(name: str) -> str:
    """What the autoencoder name ``name`` is (``pixel``, ``named``, ``folder`` or ``hub``), checked
    without loading anything; ValueError for a name that is none of them."""
    if name.split(":", 1)[0] == "pixel":
        _int_fields(name)
        return "pixel"
    if name in _NAMED_VAES:
        return "named"
    if Path(name).exists():
        return "folder"
    if "/" in name:
        return "hub"
    raise ValueError(f"unknown autoencoder {name!r}: use sdxl, ostris16, pixel, pixel:F, a hub id ORG/REPO[:SUBFOLDER] "
                     "or an existing local folder")


def _text_fields(name: str) -> tuple[str, list[int] | str]:
    """(kind, fields) of the text encoder name ``name``: ``openclip`` and the text after its
    prefix, or ``offline`` / ``minilm`` and their integer fields; ValueError for any other name."""
    if name.startswith("openclip:") and name[len("openclip:"):]:
        return "openclip", name[len("openclip:"):]
    parsed = _int_fields(name)
    if parsed is None or parsed[0] == "pixel":
        raise ValueError(f"unknown text encoder {name!r}: use openclip:ARCH[:PRETRAINED], openclip:hf-hub:ORG/REPO or "
                         "offline[:DIM[:LENGTH[:SEED]]] or minilm[:LENGTH]")
    return parsed


def load_autoencoder(name: str, dtype: torch.dtype = torch.float32) -> Autoencoder:
    """The frozen autoencoder called ``name`` (see the module docstring)."""
    kind = autoencoder_kind(name)
    if kind == "pixel":
        fields = _int_fields(name)[1]
        return PixelAutoencoder(fields[0] if fields else 1)
    if kind == "named":
        source, subfolder, scale = _NAMED_VAES[name]
        return DiffusersAutoencoder.from_pretrained(source, subfolder, name=name, scale=scale, dtype=dtype)
    if kind == "folder":
        return DiffusersAutoencoder.from_pretrained(name, name=name, dtype=dtype)
    source, _, subfolder = name.partition(":")
    return DiffusersAutoencoder.from_pretrained(source, subfolder or None, name=name, dtype=dtype)


def load_text_encoder(name: str, device: str | torch.device = "cpu") -> TextEncoder:
    """The frozen text encoder called ``name`` (see the module docstring)."""
    kind, fields = _text_fields(name)
    if kind == "openclip":
        return OpenClipTextEncoder.from_name(fields, device=device)
    return (OfflineTextEncoder if kind == "offline" else MiniLMTextEncoder)(*fields).to(device)


def caption_length(name: str) -> int:
    """Caption tokens per image of the text encoder called ``name``, read from its name without
    loading it (openclip: 77; ``offline[:DIM[:LENGTH]]`` and ``minilm[:LENGTH]``: their defaults
    unless given): what a plan needs before any data is encoded."""
    kind, fields = _text_fields(name)
    if kind == "openclip":
        return 77
    if kind == "offline":
        return fields[1] if len(fields) > 1 else OfflineTextEncoder.__init__.__defaults__[1]
    return fields[0] if fields else MiniLMTextEncoder.__init__.__defaults__[0]


__all__ = [
    "Autoencoder",
    "EncoderConfig",
    "DiffusersAutoencoder",
    "MiniLMTextEncoder",
    "OfflineTextEncoder",
    "OpenClipTextEncoder",
    "PixelAutoencoder",
    "TextEncoder",
    "autoencoder_kind",
    "caption_length",
    "load_autoencoder",
    "load_text_encoder",
]
