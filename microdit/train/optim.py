"""AdamW parameter groups chosen by module type (never by parameter-name substrings).

Groups: ``moe`` (every parameter of an expert-choice MoE layer: experts and router; learning
rate x ``moe_lr_scale``, weight decay), ``no_decay`` (LayerNorm weights, biases, and the
patch / timestep embedders when configured), ``decay`` (everything else). With
``weight_decay_mode="reference"`` nothing is exempt from weight decay, as in the reference
implementation (one AdamW group over every parameter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from timm.layers import PatchEmbed
from torch import nn

from microdit.nn import ExpertChoiceMoE, TimestepEmbedder

WEIGHT_DECAY_MODES = ("ours", "reference")


@dataclass
class OptimConfig:
    """AdamW (the paper: lr 2.4e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.1) with the
    parameter groups of :func:`param_groups`. ``moe_lr_scale`` multiplies the learning rate of
    expert and router parameters (the paper states lr / 2; the reference implementation's name
    filter never applied it, so its released models trained MoE parameters at 1.0 x lr);
    ``no_decay_embeddings`` exempts the patch and timestep embedders from weight decay;
    ``weight_decay_mode`` ``reference`` decays every parameter, as the reference does."""

    lr: float = 2.4e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.1
    moe_lr_scale: float = 0.5
    no_decay_embeddings: bool = True
    weight_decay_mode: str = "ours"  # ours: norms, biases (+ embedders) exempt | reference: every parameter

    def problems(self) -> list[str]:
        """One message per invalid field (empty when valid)."""
        out = []
        if self.lr <= 0:
            out.append(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.moe_lr_scale <= 0 or self.eps <= 0:
            out.append(f"need weight_decay >= 0, moe_lr_scale > 0 and eps > 0, got {self.weight_decay}, "
                       f"{self.moe_lr_scale}, {self.eps}")
        if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
            out.append(f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {self.weight_decay_mode!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            out.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        return out


def param_groups(model: nn.Module, weight_decay: float, moe_lr_scale: float,
                 no_decay_embeddings: bool = True, weight_decay_mode: str = "ours") -> list[dict]:
    """Parameter groups for AdamW; each group carries ``name`` and ``lr_scale``."""
    exempt = weight_decay_mode == "ours"
    moe = {id(p) for m in model.modules() if isinstance(m, ExpertChoiceMoE) for p in m.parameters()}
    embed_types = (PatchEmbed, TimestepEmbedder) if no_decay_embeddings else ()
    embeddings = {id(p) for m in model.modules() if isinstance(m, embed_types) for p in m.parameters()}
    groups = {"decay": [], "no_decay": [], "moe": []}
    for module in model.modules():
        for attr, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if id(p) in moe:
                groups["moe"].append(p)
            elif exempt and (isinstance(module, nn.LayerNorm) or attr == "bias" or id(p) in embeddings):
                groups["no_decay"].append(p)
            else:
                groups["decay"].append(p)
    settings = {"decay": (weight_decay, 1.0), "no_decay": (0.0, 1.0), "moe": (weight_decay, moe_lr_scale)}
    return [{"name": name, "params": params, "weight_decay": settings[name][0], "lr_scale": settings[name][1]}
            for name, params in groups.items() if params]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """Fused AdamW (one kernel over all tensors, on CPU and CUDA; it can skip a step on a device
    flag, see :mod:`microdit.train.guard`) over :func:`param_groups`."""
    groups = param_groups(model, cfg.weight_decay, cfg.moe_lr_scale, cfg.no_decay_embeddings, cfg.weight_decay_mode)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_scale``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_scale"]
