"""Exponential moving average of model weights, kept in float32."""

from __future__ import annotations

import copy

import torch
from torch import nn


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
