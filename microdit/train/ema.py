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

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """Blend the current weights of ``model`` in."""
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach().float(), 1 - decay)

    def state_dict(self) -> dict:
        """The averaged weights."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore averaged weights."""
        self.model.load_state_dict(state)
