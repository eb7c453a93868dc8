"""Configuration of the MicroDiT network: a typed dataclass, its validation and the derived
per-block layout (attention width, FFN kind and hidden width per block)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from microdit.nn.mlp import gelu_hidden, swiglu_hidden

FFN_KINDS = ("swiglu", "gelu")
WIDTH_SCALINGS = ("layerwise", "constant")


@dataclass(frozen=True)
class BlockSpec:
    """Shape of one DiT block: attention width, dense FFN hidden width or MoE expert hidden width."""

    attn_width: int
    moe: bool
    hidden: int


@dataclass
class MicroDiTConfig:
    """Every knob of the MicroDiT network (experiments/README.md, Method: the network).

    ``mixer_depth = 0`` gives no patch-mixer (naive masking); ``mixer_qkv_ratio`` < 1 narrows the
    mixer's self-attention as layer-wise scaling narrows the backbone's. ``decoder_depth > 0`` adds
    MaskDiT's decoder (Zheng et al. 2023): after the backbone the kept tokens are projected to
    ``decoder_width``, masked positions get a learned mask token, a fixed position embedding is
    added to every token, and ``decoder_depth`` dense blocks run on all tokens, so the network
    predicts every patch (train it with MaskDiT's auxiliary loss, ``StageConfig.mae_loss_weight``;
    MaskDiT's decoder is 8 blocks of width 512). Layer-wise width scaling uses
    ``linspace(lo, hi, depth)`` of ``qkv_ratio`` and ``mlp_ratio`` over the backbone blocks;
    ``width_scaling = "constant"`` uses the mean of each range in every block (the paper's
    constant-width baseline); equal bounds give any chosen constant.
    """

    width: int = 512
    depth: int = 16
    head_dim: int = 32
    patch_size: int = 2
    in_channels: int = 4
    input_size: list[int] = field(default_factory=lambda: [32, 32])
    caption_dim: int = 1024
    mixer_depth: int = 4
    mixer_width: int = 512
    mixer_mlp_ratio: float = 4.0
    mixer_qkv_ratio: float = 1.0
    decoder_depth: int = 0
    decoder_width: int = 512
    qkv_ratio: list[float] = field(default_factory=lambda: [0.5, 1.0])
    mlp_ratio: list[float] = field(default_factory=lambda: [0.5, 4.0])
    width_scaling: str = "layerwise"
    ffn: str = "swiglu"
    caption_mlp_ratio: float = 4.0
    multiple_of: int = 256
    moe: bool = True
    moe_every: int = 2
    num_experts: int = 8
    expert_capacity: float = 2.0
    freq_dim: int = 512
    pos_interp_scale: float = 1.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if isinstance(self.input_size, int):
            self.input_size = [self.input_size, self.input_size]
        self.input_size = list(self.input_size)
        self.qkv_ratio = list(self.qkv_ratio)
        self.mlp_ratio = list(self.mlp_ratio)

    @classmethod
    def from_dict(cls, values: dict, where: str = "model config") -> MicroDiTConfig:
        """Build from a mapping, rejecting unknown keys with the list of valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
        return cls(**values)

    @property
    def base_grid(self) -> tuple[int, int]:
        """Token grid (h, w) at the configured input size."""
        return self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size

    def problems(self) -> list[str]:
        """One message per invalid field (empty when the config is valid)."""
        out = []
        positive = ["width", "depth", "head_dim", "patch_size", "in_channels", "caption_dim", "multiple_of",
                    "moe_every", "num_experts", "freq_dim"]
        out += [f"{name} must be >= 1, got {getattr(self, name)}" for name in positive if getattr(self, name) < 1]
        for name in ("mixer_depth", "decoder_depth"):
            if getattr(self, name) < 0:
                out.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mixer_depth > 0 and self.mixer_width < 1:
            out.append(f"mixer_width must be >= 1 when mixer_depth > 0, got {self.mixer_width}")
        if self.decoder_depth > 0 and self.decoder_width < 4:
            out.append(f"decoder_width must be >= 4 when decoder_depth > 0, got {self.decoder_width}")
        if self.head_dim >= 1:
            for name in (("width",) + (("mixer_width",) if self.mixer_depth > 0 else ())
                         + (("decoder_width",) if self.decoder_depth > 0 else ())):
                if getattr(self, name) % self.head_dim:
                    out.append(f"{name} {getattr(self, name)} is not divisible by head_dim {self.head_dim}")
        if len(self.input_size) != 2 or any(s < 1 for s in self.input_size):
            out.append(f"input_size must be one positive int or [H, W], got {self.input_size}")
        elif self.patch_size >= 1 and any(s % self.patch_size for s in self.input_size):
            out.append(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.width % 4 and self.width >= 1:
            out.append(f"width must be divisible by 4 (2-D sin-cos position embedding), got {self.width}")
        for name in ("qkv_ratio", "mlp_ratio"):
            value = getattr(self, name)
            if len(value) != 2 or any(r <= 0 for r in value) or value[0] > value[1]:
                out.append(f"{name} must be [lo, hi] with 0 < lo <= hi, got {value}")
        if self.qkv_ratio and max(self.qkv_ratio) > 1:
            out.append(f"qkv_ratio must not exceed 1 (attention is never wider than the block), got {self.qkv_ratio}")
        if not 0 < self.mixer_qkv_ratio <= 1:
            out.append(f"mixer_qkv_ratio must be in (0, 1], got {self.mixer_qkv_ratio}")
        if self.width_scaling not in WIDTH_SCALINGS:
            out.append(f"width_scaling must be one of {WIDTH_SCALINGS}, got {self.width_scaling!r}")
        if self.ffn not in FFN_KINDS:
            out.append(f"ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        for name in ("mixer_mlp_ratio", "caption_mlp_ratio", "expert_capacity", "pos_interp_scale", "norm_eps"):
            if getattr(self, name) <= 0:
                out.append(f"{name} must be > 0, got {getattr(self, name)}")
        return out

    def validate(self) -> None:
        """Raise ValueError listing every problem of this config."""
        problems = self.problems()
        if problems:
            raise ValueError("invalid model config:\n  - " + "\n  - ".join(problems))

    def _ratios(self, bounds: list[float]) -> list[float]:
        if self.width_scaling == "constant":
            return [float(np.mean(bounds))] * self.depth
        return [float(r) for r in np.linspace(bounds[0], bounds[1], self.depth)]

    def attn_width(self, ratio: float, dim: int | None = None) -> int:
        """Self-attention width at qkv ratio r in a block of width ``dim`` (default D): dim if
        r == 1, else 2 hd * ceil(int(dim r) / (2 hd))."""
        dim = self.width if dim is None else dim
        if ratio == 1.0:
            return dim
        step = 2 * self.head_dim
        return step * math.ceil(int(dim * ratio) / step)

    def ffn_hidden(self, dim: int, ratio: float, moe: bool) -> int:
        """Hidden width of a dense FFN (SwiGLU or GELU) or of an MoE expert (GELU)."""
        if moe or self.ffn == "gelu":
            return gelu_hidden(dim, ratio, self.multiple_of)
        return swiglu_hidden(dim, ratio, self.multiple_of)

    def is_moe(self, index: int, depth: int, is_mixer: bool) -> bool:
        """MoE placement: block i is MoE iff (i + 1) % moe_every == 0, never the last backbone
        block and never the first mixer block."""
        if not self.moe or (index + 1) % self.moe_every:
            return False
        return index >= 1 if is_mixer else index != depth - 1

    def backbone_specs(self) -> list[BlockSpec]:
        """Per-block layout of the backbone (layer-wise or constant width)."""
        specs = []
        for i, (qkv, mlp) in enumerate(zip(self._ratios(self.qkv_ratio), self._ratios(self.mlp_ratio), strict=True)):
            moe = self.is_moe(i, self.depth, is_mixer=False)
            specs.append(BlockSpec(self.attn_width(qkv), moe, self.ffn_hidden(self.width, mlp, moe)))
        return specs

    def decoder_specs(self) -> list[BlockSpec]:
        """Per-block layout of the MaskDiT decoder: width ``decoder_width``, dense FFN at ratio 4."""
        dim = self.decoder_width
        return [BlockSpec(dim, False, self.ffn_hidden(dim, 4.0, False))] * self.decoder_depth

    def mixer_specs(self) -> list[BlockSpec]:
        """Per-block layout of the patch-mixer (full attention width, ``mixer_mlp_ratio``)."""
        specs = []
        for i in range(self.mixer_depth):
            moe = self.is_moe(i, self.mixer_depth, is_mixer=True)
            specs.append(BlockSpec(self.attn_width(self.mixer_qkv_ratio, self.mixer_width), moe,
                                   self.ffn_hidden(self.mixer_width, self.mixer_mlp_ratio, moe)))
        return specs
