"""Shared test helpers of the diffusion tests."""

import pytest
import torch


class Recorder(torch.nn.Module):
    """A stand-in network F that records its inputs and returns a fixed output."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, c, y, **kwargs):
        self.seen = (x, c, y, kwargs)
        return self.out


@pytest.fixture
def recorder():
    """``recorder(output)``: a :class:`Recorder` network returning ``output``."""
    return Recorder
