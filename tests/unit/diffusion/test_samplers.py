"""Samplers: Karras schedule, Heun / Euler on an exact Gaussian denoiser, churn, CFG batching."""

import pytest
import torch

from microdit.diffusion import edm_sample, guided_denoiser, karras_sigmas
from microdit.models import build_model

MU, STD = 0.7, 0.4  # target data distribution N(MU, STD^2) per dimension


def gaussian_denoiser(x, sigma):
    """Exact E[x0 | x] for x0 ~ N(MU, STD^2), x = x0 + sigma n."""
    return MU + STD**2 / (STD**2 + sigma**2) * (x - MU)


def test_karras_sigmas():
    s = karras_sigmas(30, 0.002, 80.0, 7.0)
    assert s.dtype == torch.float64 and s.shape == (31,)
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002) and s[-1] == 0
    assert torch.all(s[1:] < s[:-1])
    i = 10
    expected = (80 ** (1 / 7) + i / 29 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s[i].item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="num_steps"):
        karras_sigmas(0, 0.002, 80.0, 7.0)


@pytest.mark.parametrize("solver,steps,tol", [("heun", 30, 0.01), ("euler", 200, 0.02)])
def test_sampler_recovers_gaussian_target(solver, steps, tol):
    noise = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = edm_sample(gaussian_denoiser, noise, karras_sigmas(steps, 0.002, 80.0, 7.0), solver=solver)
    assert x.dtype == torch.float64
    assert x.mean().item() == pytest.approx(MU, abs=tol)
    assert x.std().item() == pytest.approx(STD, rel=tol * 2)


def test_heun_call_count_skips_last_correction():
    calls = []

    def counting(x, sigma):
        calls.append(float(sigma))
        return gaussian_denoiser(x, sigma)

    edm_sample(counting, torch.zeros(4), karras_sigmas(10, 0.002, 80.0, 7.0), solver="heun")
    assert len(calls) == 2 * 10 - 1
    assert 0.0 not in calls


def test_churn_is_stochastic_but_deterministic_per_generator():
    sig = karras_sigmas(20, 0.002, 80.0, 7.0)
    noise = torch.randn(1000, dtype=torch.float64)
    runs = [edm_sample(gaussian_denoiser, noise, sig, S_churn=10, generator=torch.Generator().manual_seed(s))
            for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    plain = edm_sample(gaussian_denoiser, noise, sig)
    assert not torch.equal(plain, runs[0])
    big = torch.randn(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fine = karras_sigmas(80, 0.002, 80.0, 7.0)  # churn adds discretisation error: more steps
    churned = edm_sample(gaussian_denoiser, big, fine, S_churn=10, generator=torch.Generator().manual_seed(5))
    assert churned.mean().item() == pytest.approx(MU, abs=0.01)
    assert churned.std().item() == pytest.approx(STD, rel=0.02)


@pytest.fixture(scope="module")
def net():
    model = build_model("nano", depth=2, mixer_depth=1).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_cfg_scale_one_equals_conditional(net):
    y = torch.randn(3, 4, net.cfg.caption_dim, dtype=torch.float64)
    x = torch.randn(3, 12, 16, 16, dtype=torch.float64)
    sigma = torch.tensor(2.5, dtype=torch.float64)
    cond = guided_denoiser(net, y, 0.9, dtype=torch.float64)(x, sigma)
    guided = guided_denoiser(net, y, 0.9, cfg_scale=1.0, y_uncond=torch.zeros_like(y), dtype=torch.float64)(x, sigma)
    torch.testing.assert_close(guided, cond, rtol=1e-10, atol=1e-10)


def test_cfg_scale_zero_is_the_unconditional_model(net):
    """``--cfg-scale 0`` samples the unconditional model (the all-zero caption, every token attended,
    as training's caption dropout gives it), whatever the prompt and its padding mask."""
    y = torch.randn(2, 4, net.cfg.caption_dim, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    x = torch.randn(2, 12, 16, 16, dtype=torch.float64)
    sigma = torch.tensor(1.3, dtype=torch.float64)
    uncond = guided_denoiser(net, torch.zeros_like(y), 0.9, dtype=torch.float64)(x, sigma)
    guided = guided_denoiser(net, y, 0.9, cfg_scale=0.0, y_uncond=torch.zeros_like(y), y_mask=mask,
                             dtype=torch.float64)(x, sigma)
    torch.testing.assert_close(guided, uncond, rtol=1e-10, atol=1e-10)


def test_cfg_batch_equals_two_passes(net):
    y = torch.randn(2, 4, net.cfg.caption_dim, dtype=torch.float64)
    x = torch.randn(2, 12, 16, 16, dtype=torch.float64)
    sigma = torch.tensor(0.7, dtype=torch.float64)
    cond = guided_denoiser(net, y, 0.9, dtype=torch.float64)(x, sigma)
    uncond = guided_denoiser(net, torch.zeros_like(y), 0.9, dtype=torch.float64)(x, sigma)
    assert not torch.allclose(cond, uncond)
    guided = guided_denoiser(net, y, 0.9, cfg_scale=5.0, y_uncond=torch.zeros_like(y), dtype=torch.float64)(x, sigma)
    torch.testing.assert_close(guided, uncond + 5.0 * (cond - uncond), rtol=1e-10, atol=1e-10)


def test_sampling_a_network_is_deterministic(net):
    y = torch.randn(2, 4, net.cfg.caption_dim, dtype=torch.float64)
    noise = torch.randn(2, 12, 16, 16, generator=torch.Generator().manual_seed(0))
    den = guided_denoiser(net, y, 0.9, cfg_scale=3.0, y_uncond=torch.zeros_like(y), dtype=torch.float64)
    sig = karras_sigmas(5, 0.002, 80.0, 7.0)
    a, b = edm_sample(den, noise, sig), edm_sample(den, noise, sig)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    with pytest.raises(ValueError, match="solver"):
        edm_sample(den, noise, sig, solver="dpm")
