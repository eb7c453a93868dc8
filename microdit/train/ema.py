"""Exponential moving average of model weights, kept in float32."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EMAConfig:
    """A stage's exponential moving average of the weights: ``decay`` per optimizer step (0: no
    EMA), blending from ``start_images`` into the stage on (before that the EMA copies the weights).
    The paper: 0.99975 from 25k steps in its third stage, 0.9975 from 1k in the fourth."""

    decay: float = 0.0
    start_images: int = 0

    def problems(self) -> list[str]:
        """One message per invalid field (empty when valid)."""
        out = [] if 0 <= self.decay < 1 else [f"decay must be in [0, 1), got {self.decay}"]
        return out + ([] if self.start_images >= 0 else [f"start_images must be >= 0, got {self.start_images}"])


class EMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step; a decay of 0
    (before the EMA's start point) copies the weights."""

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self._params = list(self.model.parameters())

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float, skip: torch.Tensor | None = None) -> None:
        """Blend the current weights of ``model`` in (one multi-tensor op, not a Python loop per
        parameter). ``skip`` (0-dim, 0 or 1, on the weights' device) turns the update into a no-op
        without the host reading it."""
        current = [p.detach().float() for p in model.parameters()]
        if len(current) != len(self._params):
            raise ValueError(f"EMA tracks {len(self._params)} parameters, the model has {len(current)}")
        if skip is None:
            torch._foreach_lerp_(self._params, current, 1 - decay)
        else:
            weight = (1 - skip.float()) * (1 - decay)
            torch._foreach_lerp_(self._params, current, [weight] * len(current))

    def state_dict(self) -> dict:
        """The averaged weights."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore averaged weights."""
        self.model.load_state_dict(state)
