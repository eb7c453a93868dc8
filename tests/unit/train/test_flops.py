"""The analytic FLOPs meter against torch's FLOP counter for every kind of block."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from microdit.masking import MaskConfig, sample_keep_ids
from microdit.models import build_model
from microdit.train.flops import flops_per_image


@pytest.mark.parametrize("preset,overrides,ratio", [
    ("nano", {}, 0.0), ("nano", {}, 0.75), ("micro", {}, 0.5),
    ("MicroDiT_Tiny_2", dict(depth=4, mixer_depth=2, mixer_width=384), 0.75),
    ("nano", dict(mixer_depth=0, ffn="gelu", moe=False), 0.75),
    ("nano", dict(decoder_depth=2), 0.75),
])
def test_flops_meter_matches_the_flop_counter(preset, overrides, ratio):
    model = build_model(preset, **overrides)
    cfg = model.cfg
    n, length = 2, 7
    x, y = torch.randn(n, cfg.in_channels, *cfg.input_size), torch.randn(n, length, cfg.caption_dim)
    keep = sample_keep_ids(n, cfg.base_grid, MaskConfig(ratio))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, torch.zeros(n), y, keep_ids=keep).square().mean().backward()
    measured = counter.get_total_flops() / n
    predicted = flops_per_image(cfg, cfg.base_grid, length, MaskConfig(ratio)).train
    assert abs(predicted / measured - 1) < 0.02

