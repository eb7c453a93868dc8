"""EDM diffusion: preconditioning, sigma sampling, the masked loss and the samplers."""

from microdit.diffusion.edm import EDMConfig, c_in, c_noise, c_out, c_skip, denoise, loss_weight, sample_sigma
from microdit.diffusion.loss import drop_captions, edm_loss, masked_mean, patch_loss
from microdit.diffusion.samplers import SOLVERS, edm_sample, guided_denoiser, karras_sigmas

__all__ = [
    "SOLVERS",
    "EDMConfig",
    "c_in",
    "c_noise",
    "c_out",
    "c_skip",
    "denoise",
    "drop_captions",
    "edm_loss",
    "edm_sample",
    "guided_denoiser",
    "karras_sigmas",
    "loss_weight",
    "masked_mean",
    "patch_loss",
    "sample_sigma",
]
