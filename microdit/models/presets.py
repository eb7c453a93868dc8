"""Model presets (YAML data in ``presets.yaml``) and ``build_model``."""

from __future__ import annotations

from importlib import resources

import yaml

from microdit.models.config import MicroDiTConfig
from microdit.models.microdit import MicroDiT


def _load_presets() -> dict[str, dict]:
    text = resources.files("microdit.models").joinpath("presets.yaml").read_text()
    return yaml.safe_load(text)


_PRESETS = _load_presets()
PRESETS: tuple[str, ...] = tuple(_PRESETS)


def preset_config(preset: str, **overrides) -> MicroDiTConfig:
    """The config of ``preset`` with ``overrides`` applied (unknown keys rejected)."""
    if preset not in _PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; available presets: {', '.join(PRESETS)}")
    return MicroDiTConfig.from_dict({**_PRESETS[preset], **overrides}, where=f"model preset {preset!r}")


def build_model(preset: str, **overrides) -> MicroDiT:
    """Build the network of ``preset`` with any config field overridden, e.g.
    ``build_model("MicroDiT_Tiny_2", mixer_depth=0, caption_dim=768)``."""
    return MicroDiT(preset_config(preset, **overrides))
