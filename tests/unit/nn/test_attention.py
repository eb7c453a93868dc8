"""SDPA backend selection: the chosen backend must be able to run on the device."""

import pytest
import torch

from microdit.nn.attention import check_attention_backend


def test_attention_backend_must_run_on_the_device():
    for name in ("auto", "math", "flash"):
        check_attention_backend(name, torch.device("cpu"), torch.float32, 32)
    with pytest.raises(ValueError, match="attention backend 'efficient' cannot run on cpu"):
        check_attention_backend("efficient", torch.device("cpu"), torch.float32, 32)

