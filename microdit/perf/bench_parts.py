"""Benchmarks of the parts around the step: attention backends, the shard reader, the sampler."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from microdit.data import LatentBatches, make_loader
from microdit.data.encode import build_synthetic_dataset
from microdit.data.synthetic import SyntheticRecipe
from microdit.diffusion import EDMConfig, denoise, edm_sample, guided_denoiser, karras_sigmas
from microdit.models import build_model
from microdit.nn.attention import ATTENTION_BACKENDS, attention_backend, check_attention_backend
from microdit.perf.timing import median_time


def bench_attention(device: str = "cpu", batch: int = 32, tokens: int = 64, context: int = 8, heads: int = 8,
                    head_dim: int = 32, repeats: int = 10) -> dict:
    """Self- plus cross-attention forward + backward per SDPA backend (ms; None where the backend
    cannot run on this device)."""
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, device=dev, dtype=dtype, requires_grad=True)
               for _ in range(3))
    kc, vc = (torch.randn(batch, heads, context, head_dim, device=dev, dtype=dtype, requires_grad=True)
              for _ in range(2))

    def run() -> None:
        (F.scaled_dot_product_attention(q, k, v) + F.scaled_dot_product_attention(q, kc, vc)).sum().backward()

    out = {"shape": {"batch": batch, "tokens": tokens, "context": context, "heads": heads, "head_dim": head_dim},
           "ms": {}}
    for name in ("auto", *ATTENTION_BACKENDS):
        try:
            check_attention_backend(name, dev, dtype, head_dim)
        except ValueError:
            out["ms"][name] = None
            continue
        with attention_backend(name):
            out["ms"][name] = 1000 * median_time(run, repeats, 2, dev)
    return out


def bench_reader(num: int, caption_dim: int, batch: int = 32, batches: int = 60) -> dict:
    """Build + encode ``num`` synthetic samples in a temporary folder and time the reader."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_synthetic_dataset(SyntheticRecipe(str(Path(tmp) / "lat"), num, 32, 0, "pixel:2",
                                                f"offline:{caption_dim}:32"), progress=False)
        build_s = time.perf_counter() - start
        rates = {}
        for workers in (0, 2):
            it = iter(make_loader(LatentBatches(Path(tmp) / "lat", batch, caption_dropout=0.1), workers))
            next(it)
            start = time.perf_counter()
            n = sum(len(next(it)["key"]) for _ in range(batches))
            rates[workers] = n / (time.perf_counter() - start)
    return {"samples": num, "build_and_encode_s": build_s, "samples_per_s": rates}


SDXL_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=4, norm_num_groups=32, sample_size=1024, scaling_factor=0.13025)  # SDXL's VAE


def bench_encode(cases: list[tuple[str, str, list[int]]], images: int = 32, batch: int = 16,
                 device: str = "cpu") -> list[dict]:
    """``microdit-data encode`` images/s on this device, per (autoencoder, text encoder,
    resolutions) case, end to end (image shards read and decoded, encoders, latent shards
    written; all resolutions in one pass). ``sdxl-random`` is the SDXL VAE's architecture with
    random weights (the encode cost of ``sdxl`` without its download). A multi-rank encode runs one
    such process per device, each on its own shards: N devices encode N x this rate."""
    from microdit.data import encode_dataset, write_image_dataset
    from microdit.data.synthetic import SHAPES, synthetic_samples
    from microdit.encoders import DiffusersAutoencoder, load_autoencoder, load_text_encoder

    out = []
    for ae_name, text_name, resolutions in cases:
        if ae_name == "sdxl-random":
            from diffusers import AutoencoderKL

            torch.manual_seed(0)
            autoencoder = DiffusersAutoencoder(AutoencoderKL(**SDXL_VAE), "sdxl-random", 0.13025)
        else:
            autoencoder = load_autoencoder(ae_name)
        text = load_text_encoder(text_name)
        with tempfile.TemporaryDirectory() as tmp:
            size = max(resolutions)
            write_image_dataset(Path(tmp) / "img", synthetic_samples(0, images, size), size, list(SHAPES), "bench")
            encode_dataset(Path(tmp) / "img", Path(tmp) / "warm", autoencoder, text, batch, device=device,
                           progress=False, resolutions=resolutions)  # first batches: allocation, kernels
            start = time.perf_counter()
            encode_dataset(Path(tmp) / "img", Path(tmp) / "lat", autoencoder, text, batch, device=device,
                           progress=False, resolutions=resolutions)
            seconds = time.perf_counter() - start
        out.append({"autoencoder": ae_name, "text_encoder": text_name, "resolutions": resolutions, "images": images,
                    "device": device, "seconds": seconds, "images_per_s": images / seconds})
    return out


def bench_sampler(preset: str, steps: list[int], images: int = 8, device: str = "cpu") -> dict:
    """Heun sampling images/s by step count, with CFG batched (one 2N pass) and as two N passes."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(preset).to(dev).eval()
    cfg = model.cfg
    edm = EDMConfig()
    y = torch.randn(images, 8, cfg.caption_dim, device=dev)
    noise = torch.randn(images, cfg.in_channels, *cfg.input_size, device=dev)
    batched = guided_denoiser(model, y, edm.sigma_data, 5.0, torch.zeros_like(y))

    def two_passes(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.float().reshape(1).expand(x.shape[0])
        d_c = denoise(model, x.float(), s, y, edm.sigma_data)
        d_u = denoise(model, x.float(), s, torch.zeros_like(y), edm.sigma_data)
        return (d_u + 5.0 * (d_c - d_u)).double()

    out = {"preset": preset, "images": images, "by_steps": {}}
    with torch.no_grad():
        for n in steps:
            sigmas = karras_sigmas(n, edm.sigma_min, edm.sigma_max, edm.rho)
            row = {}
            for name, den in (("cfg_batched", batched), ("cfg_two_passes", two_passes)):
                seconds = median_time(lambda den=den, sigmas=sigmas: edm_sample(den, noise, sigmas), 2, 1, dev)
                row[name] = images / seconds
            out["by_steps"][n] = row
    return out
