"""EDM diffusion: preconditioning, sigma sampling, the masked loss, the samplers and generation."""

from microdit.diffusion.edm import EDMConfig, c_in, c_noise, c_out, c_skip, denoise, loss_weight, sample_sigma
from microdit.diffusion.generate import generate, seeded_noise
from microdit.diffusion.loss import edm_loss, masked_mean, masked_reconstruction_loss, patch_loss, patchify
from microdit.diffusion.samplers import SOLVERS, SamplerConfig, edm_sample, guided_denoiser, karras_sigmas

__all__ = [
    "SOLVERS",
    "EDMConfig",
    "SamplerConfig",
    "c_in",
    "c_noise",
    "c_out",
    "c_skip",
    "denoise",
    "edm_loss",
    "edm_sample",
    "generate",
    "guided_denoiser",
    "karras_sigmas",
    "loss_weight",
    "masked_mean",
    "masked_reconstruction_loss",
    "patch_loss",
    "patchify",
    "sample_sigma",
    "seeded_noise",
]
