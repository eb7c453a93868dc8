"""Analytic FLOPs of MicroDiT for an actual config, input size, caption length and mask ratio.

Counts every matrix multiply (2 FLOPs per multiply-add) of the forward pass: linear layers, the
patch-embedding convolution and the two products inside attention; norms, activations and
gathers are not counted (as ``torch.utils.flop_counter``, against which the tests check this).
A training step costs 3 x forward (forward + backward of activations and weights).

Symbols: T tokens seen by the mixer (all), K tokens in the backbone (kept), L caption tokens,
D width, Dm mixer width, Dc conditioning width (= D), E experts.
"""

from __future__ import annotations

from dataclasses import dataclass

from microdit.masking import MaskConfig, num_kept
from microdit.models.config import BlockSpec, MicroDiTConfig
from microdit.nn.mlp import swiglu_hidden
from microdit.nn.moe import expert_capacity


def _block_flops(cfg: MicroDiTConfig, dim: int, spec: BlockSpec, tokens: int, caption: int) -> int:
    """One DiT block of width ``dim`` over ``tokens`` image tokens and ``caption`` caption tokens."""
    w = spec.attn_width
    flops = 2 * cfg.width * 6 * dim  # adaLN modulation (per sample)
    flops += 2 * tokens * dim * 3 * w + 2 * 2 * tokens * tokens * w + 2 * tokens * w * dim  # self-attention
    flops += 2 * tokens * dim * dim + 2 * caption * dim * 2 * dim  # cross-attention q, kv
    flops += 2 * 2 * tokens * caption * dim + 2 * tokens * dim * dim  # cross-attention products, proj
    if spec.moe:
        k = expert_capacity(tokens, cfg.num_experts, cfg.expert_capacity)
        flops += 2 * tokens * dim * cfg.num_experts + 2 * cfg.num_experts * k * 2 * dim * spec.hidden
    elif cfg.ffn == "gelu":
        flops += 2 * tokens * 2 * dim * spec.hidden
    else:
        flops += 2 * tokens * 3 * dim * spec.hidden
    return flops


@dataclass
class FlopsBreakdown:
    """Forward FLOPs per image by part; ``train`` = 3 x ``forward``."""

    embed: int
    caption: int
    mixer: int
    backbone: int
    final: int

    @property
    def forward(self) -> int:
        """Forward FLOPs per image."""
        return self.embed + self.caption + self.mixer + self.backbone + self.final

    @property
    def train(self) -> int:
        """Training FLOPs per image (forward + backward)."""
        return 3 * self.forward


def flops_per_image(cfg: MicroDiTConfig, grid: tuple[int, int], caption_len: int,
                    mask: MaskConfig | None = None) -> FlopsBreakdown:
    """FLOPs of one image through ``MicroDiT(cfg)`` on an (h, w) token grid with ``caption_len``
    caption tokens, keeping the tokens ``mask`` leaves (``microdit.masking.num_kept``; None:
    unmasked)."""
    t = grid[0] * grid[1]
    k = t if mask is None else num_kept(grid, mask)
    d, dm, n, p = cfg.width, cfg.mixer_width, caption_len, cfg.patch_size
    embed = 2 * t * cfg.in_channels * p * p * d + 2 * (cfg.freq_dim * d + d * d)
    hidden = swiglu_hidden(d, cfg.caption_mlp_ratio, cfg.multiple_of)
    caption = 2 * n * (cfg.caption_dim * d + d * d)  # caption projection MLP
    caption += 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * n * 3 * d * hidden  # caption block
    caption += 2 * 2 * d * d  # pooled-caption MLP
    mixer = 0
    if cfg.mixer_depth > 0:
        if dm != d:
            mixer += 2 * t * d * dm + 2 * n * d * dm + 2 * k * dm * d  # x_in, y_in, x_out (kept tokens)
        mixer += sum(_block_flops(cfg, dm, spec, t, n) for spec in cfg.mixer_specs())
    backbone = sum(_block_flops(cfg, d, spec, k, n) for spec in cfg.backbone_specs())
    out_tokens = k
    if cfg.decoder_depth > 0:  # the MaskDiT decoder runs on all tokens and is counted with the backbone
        backbone += sum(_block_flops(cfg, d, spec, t, n) for spec in cfg.decoder_specs())
        out_tokens = t
    final = 2 * d * 2 * d + 2 * out_tokens * d * p * p * cfg.in_channels
    return FlopsBreakdown(embed, caption, mixer, backbone, final)
