"""MicroDiT networks: ``build_model(preset, **overrides)``, ``PRESETS``, ``MicroDiTConfig``."""

from microdit.models.config import BlockSpec, MicroDiTConfig
from microdit.models.microdit import MicroDiT, PatchMixer
from microdit.models.presets import PRESETS, build_model, preset_config

__all__ = ["PRESETS", "BlockSpec", "MicroDiT", "MicroDiTConfig", "PatchMixer", "build_model", "preset_config"]
