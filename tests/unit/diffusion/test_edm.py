"""EDM preconditioning identities, sigma sampling and the denoiser (EDM Table 1, eq. 7)."""

import math

import pytest
import torch

from microdit.diffusion import (
    EDMConfig,
    c_in,
    c_noise,
    c_out,
    c_skip,
    denoise,
    loss_weight,
    sample_sigma,
)

SD = 0.9


def test_boundary_behaviour():
    small, large = torch.tensor(1e-6, dtype=torch.float64), torch.tensor(1e6, dtype=torch.float64)
    assert c_skip(small, SD) == pytest.approx(1.0, abs=1e-10)
    assert c_out(small, SD) == pytest.approx(0.0, abs=1e-5)
    assert c_skip(large, SD) == pytest.approx(0.0, abs=1e-10)
    assert c_out(large, SD) == pytest.approx(SD, rel=1e-9)
    assert c_noise(torch.tensor(math.e**4)) == pytest.approx(1.0)


def test_preconditioning_identities():
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    # effective target of F has unit variance: lambda * c_out^2 = 1
    torch.testing.assert_close(loss_weight(sigma, SD) * c_out(sigma, SD) ** 2, torch.ones_like(sigma))
    # the skip and output weights split the unit: c_skip + c_out^2 / sd^2 = 1, and c_out^2 = sigma^2 c_skip
    torch.testing.assert_close(c_skip(sigma, SD) + c_out(sigma, SD) ** 2 / SD**2, torch.ones_like(sigma))
    torch.testing.assert_close(c_out(sigma, SD) ** 2, sigma**2 * c_skip(sigma, SD))
    torch.testing.assert_close(c_in(sigma, SD) ** 2 * (sigma**2 + SD**2), torch.ones_like(sigma))


def test_unit_variance_network_input():
    g = torch.Generator().manual_seed(0)
    for s in [0.01, 0.5, 3.0, 40.0]:
        x = torch.randn(400_000, generator=g, dtype=torch.float64) * SD
        n = torch.randn(400_000, generator=g, dtype=torch.float64) * s
        sigma = torch.tensor(s, dtype=torch.float64)
        assert (c_in(sigma, SD) * (x + n)).var().item() == pytest.approx(1.0, rel=0.01)


def test_sigma_distribution_is_lognormal():
    sigma = sample_sigma(200_000, -0.6, 1.2, torch.Generator().manual_seed(0))
    assert sigma.log().mean().item() == pytest.approx(-0.6, abs=0.01)
    assert sigma.log().std().item() == pytest.approx(1.2, abs=0.01)
    assert sigma.dtype == torch.float32


def test_denoiser_formula(recorder):
    x = torch.randn(3, 2, 4, 4)
    f = torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    net = recorder(f)
    d = denoise(net, x, sigma, torch.zeros(3, 1, 1), SD, keep_ids=None)
    s = sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(d, c_skip(s, SD) * x + c_out(s, SD) * f)
    torch.testing.assert_close(net.seen[0], c_in(s, SD) * x)
    torch.testing.assert_close(net.seen[1], sigma.log() / 4)


def test_edm_config_problems():
    assert EDMConfig().problems() == []
    problems = EDMConfig(sigma_data=0.0, sigma_min=100.0).problems()
    assert any("sigma_data must be > 0" in p for p in problems)
    assert any("sigma_min (100.0) must be < sigma_max (80.0)" in p for p in problems)

