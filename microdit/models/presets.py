"""Model presets (YAML data in ``presets.yaml``), ``build_model``, and the ``model`` section of a
run config (a preset plus any of its fields overridden)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Optional

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


def _optional_fields(cls) -> list[tuple[str, Any, Any]]:
    """(name, Optional[type], None) for every field of a config dataclass: 'not overridden'."""
    hints = {"int": Optional[int], "float": Optional[float], "str": Optional[str], "bool": Optional[bool],
             "list[int]": Optional[list[int]], "list[float]": Optional[list[float]]}
    return [(f.name, hints[f.type], field(default=None)) for f in dataclasses.fields(cls)]


ModelOverrides = dataclasses.make_dataclass("ModelOverrides", _optional_fields(MicroDiTConfig))
ModelOverrides.__doc__ = "Any MicroDiTConfig field; None keeps the preset's value."
ModelOverrides.__module__ = __name__  # importable by name: pickled by reference (submitit sends configs to tasks)


@dataclass
class PresetConfig:
    """A model preset and any of its fields overridden (``model.overrides.mixer_depth=0``)."""

    preset: str = "nano"
    overrides: ModelOverrides = field(default_factory=ModelOverrides)

    def build_config(self) -> MicroDiTConfig:
        """The network config: preset with the non-null overrides applied."""
        values = {k: v for k, v in dataclasses.asdict(self.overrides).items() if v is not None}
        return preset_config(self.preset, **values)

    def problems(self) -> list[str]:
        """One message per problem of the preset or the resulting network config."""
        try:
            return self.build_config().problems()
        except ValueError as err:
            return [str(err)]
