"""Seeded text-to-image generation and the sampler config."""

import pytest
import torch

from microdit.diffusion import EDMConfig, SamplerConfig, generate, seeded_noise
from microdit.models import build_model


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = build_model("nano", depth=2).double().eval()  # float64: batch size cannot change the rounding
    for p in model.parameters():  # zero-init output layers would make every sample the same
        p.data.add_(0.02 * torch.randn_like(p))
    return model


def test_an_image_depends_on_its_seed_only(net):
    y = torch.randn(3, 4, net.cfg.caption_dim, dtype=torch.float64)
    sampler = SamplerConfig(steps=3, cfg_scale=2.0)
    together = generate(net, y, [5, 6, 7], EDMConfig(), sampler, batch_size=3)
    alone = torch.cat([generate(net, y[i:i + 1], [s], EDMConfig(), sampler, batch_size=1)
                       for i, s in enumerate([5, 6, 7])])
    torch.testing.assert_close(together, alone)
    assert together.shape == (3, *seeded_noise([0], (net.cfg.in_channels, *net.cfg.input_size)).shape[1:])
    other = generate(net, y[:1], [8], EDMConfig(), sampler)
    assert not torch.allclose(other, together[:1])


def test_sampler_settings_change_the_result(net):
    y = torch.randn(1, 4, net.cfg.caption_dim, dtype=torch.float64)
    base = generate(net, y, [0], EDMConfig(), SamplerConfig(steps=3))
    for changed in (SamplerConfig(steps=4), SamplerConfig(steps=3, solver="euler"),
                    SamplerConfig(steps=3, cfg_scale=1.0), SamplerConfig(steps=3, churn=5.0)):
        assert not torch.allclose(generate(net, y, [0], EDMConfig(), changed), base)
    churned = SamplerConfig(steps=3, churn=5.0)
    torch.testing.assert_close(generate(net, y, [0], EDMConfig(), churned), generate(net, y, [0], EDMConfig(), churned))


def test_sampler_config_problems():
    assert SamplerConfig().problems() == [] and SamplerConfig() == SamplerConfig("heun", 30, 5.0, 0.0)
    found = SamplerConfig(solver="dpm", steps=0, churn=-1).problems()
    assert len(found) == 3 and "solver must be one of" in found[0]


def test_sampler_overrides_change_only_their_fields_and_are_validated():
    run = SamplerConfig(steps=12, cfg_scale=2.0)
    assert run.with_overrides(steps=50) == SamplerConfig(steps=50, cfg_scale=2.0)
    assert run.with_overrides() == run
    with pytest.raises(ValueError, match=r"sampler: steps must be >= 1, got 0; churn must be a finite number >= 0"):
        run.with_overrides(steps=0, churn=-1.0)
    for value in (float("nan"), float("inf"), -1.0):  # a command line's --cfg-scale nan is a float
        with pytest.raises(ValueError, match=rf"sampler: cfg_scale must be a finite number >= 0 .*, got {value}"):
            run.with_overrides(cfg_scale=value)
    assert "churn must be a finite number" in SamplerConfig(churn=float("nan")).problems()[0]
    assert run.with_overrides(cfg_scale=0.0).cfg_scale == 0.0  # 0: unconditional
