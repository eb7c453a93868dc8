"""The EDM training loss: per-patch reduction, masked patches excluded, the MaskDiT auxiliary term."""

import pytest
import torch
from einops import rearrange

from microdit.diffusion import (
    EDMConfig,
    c_out,
    c_skip,
    edm_loss,
    loss_weight,
    masked_mean,
    masked_reconstruction_loss,
    patch_loss,
    patchify,
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


def _maskdit_oracle(d, x_noisy, keep, p):
    """MaskDiT's auxiliary loss written out patch by patch."""
    n, c, h, w = d.shape
    out = []
    for i in range(n):
        losses = []
        for t in range((h // p) * (w // p)):
            if t in keep[i].tolist():
                continue
            r, q = divmod(t, w // p)
            target = x_noisy[i, :, r * p:(r + 1) * p, q * p:(q + 1) * p].permute(1, 2, 0).reshape(-1)
            pred = d[i, :, r * p:(r + 1) * p, q * p:(q + 1) * p].permute(1, 2, 0).reshape(-1)
            target = (target - target.mean()) / (target.var(unbiased=True) + 1e-6).sqrt()
            losses.append(((pred - target) ** 2).mean())
        out.append(torch.stack(losses).mean())
    return torch.stack(out)


def test_maskdit_loss_against_a_patch_by_patch_oracle():
    g = torch.Generator().manual_seed(0)
    d, x_noisy = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 4, 8, 8, generator=g,
                                                                                      dtype=torch.float64)
    keep = sample_keep_ids(3, (4, 4), MaskConfig(0.5), g)
    torch.testing.assert_close(masked_reconstruction_loss(d, x_noisy, keep, 2), _maskdit_oracle(d, x_noisy, keep, 2))


def test_maskdit_target_is_the_normalised_noisy_input_on_masked_patches_only():
    g = torch.Generator().manual_seed(1)
    x_noisy = 3.0 * torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) + 5.0
    keep = sample_keep_ids(2, (4, 4), MaskConfig(0.75), g)
    target = patchify(x_noisy, 2)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    perfect = rearrange(target, "n (h w) (p q c) -> n c (h p) (w q)", h=4, p=2, q=2)
    kept = keep_mask(keep, 2, 16)
    scrambled = patchify(perfect, 2).clone()
    scrambled[kept] = 100.0  # anything at the kept patches: not part of this loss
    scrambled = rearrange(scrambled, "n (h w) (p q c) -> n c (h p) (w q)", h=4, p=2, q=2).requires_grad_()
    loss = masked_reconstruction_loss(scrambled, x_noisy, keep, 2)
    torch.testing.assert_close(loss, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    unnormalised = masked_reconstruction_loss(x_noisy, x_noisy, keep, 2)
    assert (unnormalised > 1).all()  # the raw noisy input is not the target: its patches are normalised
    off = scrambled.detach().clone().requires_grad_()
    with torch.no_grad():
        off += 0.1
    masked_reconstruction_loss(off, x_noisy, keep, 2).sum().backward()
    grad = patchify(off.grad, 2).abs().sum(-1)  # (N, T)
    assert torch.all(grad[kept] == 0) and torch.all(grad[~kept] > 0)


def test_edm_loss_adds_the_maskdit_term_unweighted_by_sigma(recorder):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    sigma, noise = torch.tensor([0.1, 1.0, 5.0, 20.0]), torch.randn(4, 4, 8, 8, generator=g)
    keep = sample_keep_ids(4, (4, 4), MaskConfig(0.75), g)
    net = recorder(torch.randn(4, 4, 8, 8, generator=g))
    edm = EDMConfig()
    plain = edm_loss(net, x0, torch.zeros(4, 1, 1), edm, 2, keep_ids=keep, sigma=sigma, noise=noise)
    both = edm_loss(net, x0, torch.zeros(4, 1, 1), edm, 2, keep_ids=keep, sigma=sigma, noise=noise, mae_weight=0.1)
    x_noisy = x0 + noise * sigma.view(-1, 1, 1, 1)
    s4 = sigma.view(-1, 1, 1, 1)
    d = c_skip(s4, edm.sigma_data) * x_noisy + c_out(s4, edm.sigma_data) * net.out
    torch.testing.assert_close(both - plain, 0.1 * masked_reconstruction_loss(d, x_noisy, keep, 2))
    unmasked = edm_loss(net, x0, torch.zeros(4, 1, 1), edm, 2, sigma=sigma, noise=noise, mae_weight=0.1)
    torch.testing.assert_close(unmasked, edm_loss(net, x0, torch.zeros(4, 1, 1), edm, 2, sigma=sigma, noise=noise))
