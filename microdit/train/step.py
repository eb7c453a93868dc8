"""One training step, the same function for the trainer and ``microdit-bench``: draw the step's
noise levels, noise and token masks for the whole global batch, run the EDM loss (masked
reduction) on each micro-batch with gradient accumulation, clip the gradient norm and apply
fused AdamW through the device-side non-finite guard.

Every random draw of a step comes from one generator seeded by (seed, stage, step) and covers
the global batch; each process takes its slice. So the losses do not depend on how many
processes or accumulation steps share the global batch, and a resumed run repeats the
uninterrupted one.

Shapes: GB global batch, B micro-batch, C channels, (H, W) latent size, K kept tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from microdit.diffusion import edm_loss, sample_sigma
from microdit.masking import sample_keep_ids
from microdit.nn.attention import attention_backend
from microdit.train.guard import NonFiniteGuard, guarded_step
from microdit.train.plan import Stage


class AutocastNet(nn.Module):
    """The network run under bf16 autocast (if ``bf16``) and the chosen attention backend;
    everything around it (preconditioning, loss) stays fp32."""

    def __init__(self, net: nn.Module, device_type: str, bf16: bool, attention: str = "auto") -> None:
        super().__init__()
        self.net, self.device_type, self.bf16, self.attention = net, device_type, bf16, attention

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16), \
                attention_backend(self.attention):
            return self.net(*args, **kwargs)


@dataclass
class StepDraws:
    """The random draws of one step for the whole global batch: ``sigma`` (GB,), ``noise``
    (GB, C, H, W) and ``keep`` (GB, K) kept-token ids (None when unmasked)."""

    sigma: torch.Tensor
    noise: torch.Tensor
    keep: torch.Tensor | None


def step_generator(seed: int, stage: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of step ``step`` of stage ``stage`` (the same on every process)."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + stage * 7_919 + step) % (2**63))


def draw_step(batch: int, stage: Stage, generator: torch.Generator | None, device: torch.device) -> StepDraws:
    """Noise levels (the stage's sigma distribution), noise (its network's latent shape) and kept
    tokens (its mask) of a global batch of ``batch`` images, drawn in this order."""
    model, edm = stage.model, stage.edm
    sigma = sample_sigma(batch, edm.P_mean, edm.P_std, generator, device)  # (GB,)
    noise = torch.randn(batch, model.in_channels, *model.input_size, generator=generator, device=device)
    keep = sample_keep_ids(batch, model.base_grid, stage.mask, generator, device)  # (GB, K) or None
    return StepDraws(sigma, noise, keep)


@dataclass
class DistributedOps:
    """How a process's step talks to the others. The defaults are one process; the trainer passes
    accelerate's ``backward``, ``no_sync``, ``clip_grad_norm_`` and a summing ``reduce``."""

    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    clip_grad_norm: Callable[..., torch.Tensor] = torch.nn.utils.clip_grad_norm_
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda v: v


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, guard: NonFiniteGuard,
               micro_batches: Iterable[tuple[dict, slice]], draws: StepDraws, stage: Stage,
               ops: DistributedOps | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step of ``stage`` (its EDM constants, patch size, gradient clipping, MaskDiT
    loss weight and caption-mask setting) over ``micro_batches``: pairs of a reader batch
    (``latent``, ``text``, ``text_mask``) and its slice of the global batch's ``draws``. Returns the
    mean loss, the gradient norm before clipping (``grad_clip`` 0: none) and the guard's skip
    flag, all as device tensors (nothing here waits for the device)."""
    c = ops or DistributedOps()
    grad_clip, use_text_mask = stage.config.grad_clip, stage.data.use_text_mask
    batches = list(micro_batches)
    device = draws.sigma.device
    losses = []
    for a, (batch, part) in enumerate(batches):
        latent, text, mask = (batch[k].to(device, non_blocking=True) for k in ("latent", "text", "text_mask"))
        sync = contextlib.nullcontext() if a == len(batches) - 1 else c.no_sync()
        with sync:
            loss = edm_loss(net, latent, text, stage.edm, stage.model.patch_size,
                            keep_ids=None if draws.keep is None else draws.keep[part],
                            y_mask=mask if use_text_mask else None, sigma=draws.sigma[part], noise=draws.noise[part],
                            mae_weight=stage.mae_weight).mean()
            c.backward(loss / len(batches))
        losses.append(loss.detach())
    loss = torch.stack(losses).mean()
    grad_norm = c.clip_grad_norm(net.parameters(), grad_clip if grad_clip > 0 else math.inf)
    grad_norm = torch.as_tensor(grad_norm, device=device, dtype=torch.float32)
    skip = guarded_step(optimizer, guard, loss, grad_norm, c.reduce_sum)
    return loss, grad_norm, skip
