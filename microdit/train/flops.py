"""Analytic FLOPs of MicroDiT for an actual config, input size, caption length and mask ratio.

Counts every matrix multiply (2 FLOPs per multiply-add) of the forward pass: linear layers, the
patch-embedding convolution and the two products inside attention; norms, activations and
gathers are not counted (as ``torch.utils.flop_counter``, against which the tests check this).
A training step costs 3 x forward (forward + backward of activations and weights).

Two accountings (``FLOP_ACCOUNTINGS``): ``ours`` (the default) counts what this implementation
runs, whose expert-choice MoE dispatches and combines by gather / scatter (no FLOPs); ``paper``
adds what the reference implementation runs instead, dense one-hot einsums for dispatch and
combine, 2·E·k·T·D each per MoE layer (= 8·T²·D at capacity 2), which is how the paper's Table 2
counts (287.2 / 739.0 GFLOPs per training image of MicroDiT_XL_2 at 256 px and mask 0.75 / 0,
1148 / 3396 at 512 px). The difference is the MoE routing alone: 1.7% of a masked 256 px step,
3.4% unmasked, more at 512 px where T is larger.

Symbols: T tokens seen by the mixer (all), K tokens in the backbone (kept), L caption tokens,
D width, Dm mixer width, Dc conditioning width (= D), E experts.
"""

from __future__ import annotations

from dataclasses import dataclass

from microdit.masking import MaskConfig, num_kept
from microdit.models.config import BlockSpec, MicroDiTConfig
from microdit.nn.mlp import swiglu_hidden
from microdit.nn.moe import expert_capacity

FLOP_ACCOUNTINGS = ("ours", "paper")


def _block_flops(cfg: MicroDiTConfig, dim: int, spec: BlockSpec, tokens: int, caption: int,
                 accounting: str = "ours") -> int:
    """One DiT block of width ``dim`` over ``tokens`` image tokens and ``caption`` caption tokens."""
    w = spec.attn_width
    flops = 2 * cfg.width * 6 * dim  # adaLN modulation (per sample)
    flops += 2 * tokens * dim * 3 * w + 2 * 2 * tokens * tokens * w + 2 * tokens * w * dim  # self-attention
    flops += 2 * tokens * dim * dim + 2 * caption * dim * 2 * dim  # cross-attention q, kv
    flops += 2 * 2 * tokens * caption * dim + 2 * tokens * dim * dim  # cross-attention products, proj
    if spec.moe:
        k = expert_capacity(tokens, cfg.num_experts, cfg.expert_capacity)
        flops += 2 * tokens * dim * cfg.num_experts + 2 * cfg.num_experts * k * 2 * dim * spec.hidden
        if accounting == "paper":  # the reference's one-hot (N, E, k, T) dispatch and combine einsums
            flops += 2 * 2 * cfg.num_experts * k * tokens * dim
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
                    mask: MaskConfig | None = None, accounting: str = "ours") -> FlopsBreakdown:
    """FLOPs of one image through ``MicroDiT(cfg)`` on an (h, w) token grid with ``caption_len``
    caption tokens, keeping the tokens ``mask`` leaves (``microdit.masking.num_kept``; None:
    unmasked), counted as this implementation runs (``ours``) or as the paper counts (``paper``)."""
    if accounting not in FLOP_ACCOUNTINGS:
        raise ValueError(f"FLOP accounting must be one of {FLOP_ACCOUNTINGS}, got {accounting!r}")
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
        mixer += sum(_block_flops(cfg, dm, spec, t, n, accounting) for spec in cfg.mixer_specs())
    backbone = sum(_block_flops(cfg, d, spec, k, n, accounting) for spec in cfg.backbone_specs())
    out_tokens = k
    if cfg.decoder_depth > 0:  # the MaskDiT decoder runs on all tokens and is counted with the backbone
        dd = cfg.decoder_width
        backbone += 2 * d * 2 * d + 2 * k * d * dd  # the modulated entry: adaLN (per image), Linear on kept tokens
        if dd != d:  # y_in on the caption, x_out on all tokens
            backbone += 2 * n * d * dd + 2 * t * dd * d
        backbone += sum(_block_flops(cfg, dd, spec, t, n) for spec in cfg.decoder_specs())
        out_tokens = t
    final = 2 * d * 2 * d + 2 * out_tokens * d * p * p * cfg.in_channels
    return FlopsBreakdown(embed, caption, mixer, backbone, final)
