"""EDM preconditioning identities, sigma sampling, the denoiser, the masked loss, caption dropout."""

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
    drop_captions,
    edm_loss,
    loss_weight,
    masked_mean,
    patch_loss,
    sample_sigma,
)
from microdit.masking import keep_mask, sample_keep_ids

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


class Recorder(torch.nn.Module):
    """A stand-in network that records its inputs and returns a fixed output."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, c, y, **kwargs):
        self.seen = (x, c, y, kwargs)
        return self.out


def test_denoiser_formula():
    x = torch.randn(3, 2, 4, 4)
    f = torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    net = Recorder(f)
    d = denoise(net, x, sigma, torch.zeros(3, 1, 1), SD, keep_ids=None)
    s = sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(d, c_skip(s, SD) * x + c_out(s, SD) * f)
    torch.testing.assert_close(net.seen[0], c_in(s, SD) * x)
    torch.testing.assert_close(net.seen[1], sigma.log() / 4)


def test_patch_loss_against_loop():
    per_pixel = torch.rand(2, 3, 6, 4)
    out = patch_loss(per_pixel, 2)
    assert out.shape == (2, 6)
    for n in range(2):
        for t in range(6):
            r, c = divmod(t, 2)
            assert out[n, t] == pytest.approx(per_pixel[n, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mean().item(), rel=1e-6)
    ids = torch.tensor([[0, 5], [1, 2]])
    torch.testing.assert_close(masked_mean(out, ids), torch.stack([out[0, [0, 5]].mean(), out[1, [1, 2]].mean()]))


class Linear(torch.nn.Module):
    """F = w * x_in: a one-parameter network whose output we can differentiate against."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, c, y, keep_ids=None, y_mask=None):
        self.output = self.w * x
        self.output.retain_grad()
        return self.output


def test_masked_loss_gradient_is_zero_on_masked_patches():
    net = Linear()
    x0 = torch.randn(4, 3, 8, 8)
    keep = sample_keep_ids(4, (4, 4), 0.75)
    loss = edm_loss(net, x0, torch.zeros(4, 1, 1), EDMConfig(), 2, keep_ids=keep).mean()
    loss.backward()
    grad = net.output.grad.abs().sum(dim=1).unfold(1, 2, 2).unfold(2, 2, 2).sum(dim=(-1, -2)).flatten(1)  # (N, T)
    kept = keep_mask(keep, 4, 16)
    assert torch.all(grad[~kept] == 0)
    assert torch.all(grad[kept] > 0)


def test_unmasked_loss_is_the_mean_weighted_error():
    net = Recorder(torch.zeros(2, 3, 4, 4))
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 3, 4, 4)
    loss = edm_loss(net, x0, torch.zeros(2, 1, 1), EDMConfig(), 2, generator=g)
    g = torch.Generator().manual_seed(3)
    sigma = sample_sigma(2, -0.6, 1.2, g)
    noise = torch.randn(x0.shape, generator=g)
    s = sigma.view(-1, 1, 1, 1)
    expected = (loss_weight(s, SD) * (c_skip(s, SD) * (x0 + noise * s) - x0) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, expected)


def test_caption_dropout():
    y = torch.ones(10_000, 2, 3)
    mask = torch.zeros(10_000, 2, dtype=torch.bool)
    dropped, new_mask = drop_captions(y, mask, 0.1, torch.Generator().manual_seed(0))
    rows = dropped.abs().sum(dim=(1, 2)) == 0
    assert rows.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert torch.all(dropped[~rows] == 1)
    assert torch.equal(new_mask.all(dim=1), rows)  # dropped captions are attended in full
    same, _ = drop_captions(y, None, 0.0)
    assert same is y


def test_edm_config_problems():
    assert EDMConfig().problems() == []
    problems = EDMConfig(sigma_data=0.0, sigma_min=100.0).problems()
    assert any("sigma_data must be > 0" in p for p in problems)
    assert any("sigma_min (100.0) must be < sigma_max (80.0)" in p for p in problems)


def test_dropped_patch_loss_reaches_masked_patches():
    net = Linear()
    x0 = torch.randn(4, 3, 8, 8)
    keep = sample_keep_ids(4, (4, 4), 0.75)
    g = torch.Generator().manual_seed(0)
    plain = edm_loss(net, x0, torch.zeros(4, 1, 1), EDMConfig(), 2, keep_ids=keep, generator=g)
    g = torch.Generator().manual_seed(0)
    aux = edm_loss(net, x0, torch.zeros(4, 1, 1), EDMConfig(), 2, keep_ids=keep, generator=g, dropped_weight=0.1)
    aux.mean().backward()
    grad = net.output.grad.abs().sum(dim=1).unfold(1, 2, 2).unfold(2, 2, 2).sum(dim=(-1, -2)).flatten(1)
    assert torch.all(grad > 0) and torch.all(aux > plain)
