"""The EDM training loss: per-patch reduction, masked patches excluded, the MaskDiT auxiliary term."""

import pytest
import torch

from microdit.diffusion import (
    EDMConfig,
    c_skip,
    edm_loss,
    loss_weight,
    masked_mean,
    patch_loss,
    sample_sigma,
)
from microdit.masking import MaskConfig, keep_mask, sample_keep_ids

SD = 0.9


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
    keep = sample_keep_ids(4, (4, 4), MaskConfig(0.75))
    loss = edm_loss(net, x0, torch.zeros(4, 1, 1), EDMConfig(), 2, keep_ids=keep).mean()
    loss.backward()
    grad = net.output.grad.abs().sum(dim=1).unfold(1, 2, 2).unfold(2, 2, 2).sum(dim=(-1, -2)).flatten(1)  # (N, T)
    kept = keep_mask(keep, 4, 16)
    assert torch.all(grad[~kept] == 0)
    assert torch.all(grad[kept] > 0)


def test_unmasked_loss_is_the_mean_weighted_error(recorder):
    net = recorder(torch.zeros(2, 3, 4, 4))
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 3, 4, 4)
    loss = edm_loss(net, x0, torch.zeros(2, 1, 1), EDMConfig(), 2, generator=g)
    g = torch.Generator().manual_seed(3)
    sigma = sample_sigma(2, -0.6, 1.2, g)
    noise = torch.randn(x0.shape, generator=g)
    s = sigma.view(-1, 1, 1, 1)
    expected = (loss_weight(s, SD) * (c_skip(s, SD) * (x0 + noise * s) - x0) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, expected)


def test_dropped_patch_loss_reaches_masked_patches():
    net = Linear()
    x0 = torch.randn(4, 3, 8, 8)
    keep = sample_keep_ids(4, (4, 4), MaskConfig(0.75))
    g = torch.Generator().manual_seed(0)
    plain = edm_loss(net, x0, torch.zeros(4, 1, 1), EDMConfig(), 2, keep_ids=keep, generator=g)
    g = torch.Generator().manual_seed(0)
    aux = edm_loss(net, x0, torch.zeros(4, 1, 1), EDMConfig(), 2, keep_ids=keep, generator=g, dropped_weight=0.1)
    aux.mean().backward()
    grad = net.output.grad.abs().sum(dim=1).unfold(1, 2, 2).unfold(2, 2, 2).sum(dim=(-1, -2)).flatten(1)
    assert torch.all(grad > 0) and torch.all(aux > plain)

