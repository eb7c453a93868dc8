"""What only a GPU can show: every path a CUDA user runs keeps its tensors on one device, and gives
the CPU's answer. Skipped where torch sees no CUDA device (CI); run them on a GPU machine with
``pytest tests/cuda``."""

from __future__ import annotations

import pytest
import torch

from microdit.diffusion import EDMConfig, edm_sample, guided_denoiser, karras_sigmas
from microdit.encoders import load_text_encoder
from microdit.masking import MaskConfig
from microdit.models import build_model
from microdit.perf.bench_step import StepCase

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_offline_text_encoder_encodes_on_the_gpu_as_on_the_cpu():
    captions = ["a red circle on the left", "two small blue squares"]
    cpu_emb, cpu_mask = load_text_encoder("offline:16:8", "cpu").encode(captions)
    emb, mask = load_text_encoder("offline:16:8", "cuda").encode(captions)
    assert emb.is_cuda and mask.is_cuda
    assert torch.equal(emb.cpu(), cpu_emb) and torch.equal(mask.cpu(), cpu_mask)


def test_heun_sampling_on_the_gpu_takes_a_cpu_schedule_and_matches_the_cpu():
    torch.backends.cudnn.allow_tf32 = False  # the patch convolution in full fp32, as on the CPU
    model = build_model("nano").eval()
    edm = EDMConfig()
    y = torch.randn(2, 8, model.cfg.caption_dim)
    noise = torch.randn(2, model.cfg.in_channels, *model.cfg.input_size)
    sigmas = karras_sigmas(4, edm.sigma_min, edm.sigma_max, edm.rho)  # made on the CPU
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised outputs would make any two devices agree
            p.add_(0.02 * torch.randn_like(p))
    expected = edm_sample(guided_denoiser(model, y, edm.sigma_data, 2.0, torch.zeros_like(y)), noise, sigmas)
    model.cuda()
    got = edm_sample(guided_denoiser(model, y.cuda(), edm.sigma_data, 2.0, torch.zeros_like(y.cuda())),
                     noise.cuda(), sigmas)
    assert got.is_cuda and torch.allclose(got.cpu(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("ratio", [0.0, 0.75])
def test_a_bf16_training_step_on_the_gpu_trains_finite_weights(ratio):
    case = StepCase("nano", MaskConfig(ratio), batch=8, device="cuda")
    before = [p.detach().clone() for p in case.model.parameters()]
    for _ in range(3):
        case()
    after = list(case.model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert case.guard.total.item() == 0  # no step skipped as non-finite
