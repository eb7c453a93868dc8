"""The MicroDiT network: patch embed -> patch-mixer -> mask -> backbone -> final layer.

Shapes: N batch, C channels, H x W input, p patch, (h, w) = (H/p, W/p) token grid, T = h * w
tokens, K kept tokens, D width, Dm mixer width, L caption tokens, Dy caption width.

The network is F of EDM: ``model(x, c_noise, y)`` returns a tensor of x's shape. With ``keep_ids``
(N, K) from ``microdit.masking`` only those tokens pass the backbone (after the patch-mixer, which
sees all tokens); masked tokens come back as a zero mask token in output space.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from microdit.masking import gather_tokens, scatter_tokens
from microdit.models.config import BlockSpec, MicroDiTConfig
from microdit.nn import (
    CaptionBlock,
    DiTBlock,
    ExpertChoiceMoE,
    FinalLayer,
    TimestepEmbedder,
    gelu_mlp,
    patch_embed,
    projection_mlp,
    sincos_pos_embed_2d,
    swiglu,
    swiglu_hidden,
)


def _projection(in_dim: int, out_dim: int, eps: float) -> nn.Module:
    """LN + bias-free Linear between widths; identity when the widths are equal."""
    if in_dim == out_dim:
        return nn.Identity()
    return nn.Sequential(nn.LayerNorm(in_dim, eps=eps, bias=False), nn.Linear(in_dim, out_dim, bias=False))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor,
               y_mask: torch.Tensor | None, recompute: bool) -> torch.Tensor:
    """Apply DiT blocks in order; with ``recompute`` their activations are recomputed in backward."""
    for block in blocks:
        x = checkpoint(block, x, c, y, y_mask, use_reentrant=False) if recompute else block(x, c, y, y_mask)
    return x


class PatchMixer(nn.Module):
    """A few DiT blocks of width Dm over **all** tokens, before masking (deferred masking).

    ``x_in`` / ``y_in`` project image and caption tokens to Dm; ``x_out`` projects back to D and
    runs on kept tokens only.
    """

    def __init__(self, cfg: MicroDiTConfig, make_block) -> None:
        super().__init__()
        eps = cfg.norm_eps
        self.x_in = _projection(cfg.width, cfg.mixer_width, eps)
        self.y_in = _projection(cfg.width, cfg.mixer_width, eps)
        self.x_out = _projection(cfg.mixer_width, cfg.width, eps)
        self.blocks = nn.ModuleList([make_block(cfg.mixer_width, spec) for spec in cfg.mixer_specs()])

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        y: torch.Tensor,
        y_mask: torch.Tensor | None,
        keep_ids: torch.Tensor | None,
        recompute: bool = False,
    ) -> torch.Tensor:
        """x (N, T, D) -> (N, K, D) (K = T without keep_ids)."""
        x = self.x_in(x)  # (N, T, Dm)
        y = self.y_in(y)  # (N, L, Dm)
        x = run_blocks(self.blocks, x, c, y, y_mask, recompute)
        if keep_ids is not None:
            x = gather_tokens(x, keep_ids)  # (N, K, Dm)
        return self.x_out(x)  # (N, K, D)


PRETRAINED_WEIGHTS = "model.safetensors"
PRETRAINED_CONFIG = "config.json"
ENCODER_KEYS = ("text_encoder", "autoencoder")
WEIGHTS_KEY = "weights"  # "ema" or "raw": which weights of the run an export holds
# Dense FFN parameter names before the FFNs were timm's GluMlp / Mlp: checkpoints and exports
# written then still load (the MoE's expert tensors ``mlp.w1`` / ``mlp.w2`` have no ``.weight``).
LEGACY_FFN_KEYS = ((".mlp.w12.weight", ".mlp.fc1.weight"), (".mlp.w1.weight", ".mlp.fc1.weight"),
                   (".mlp.w3.weight", ".mlp.fc2.weight"))


def _rename_legacy_ffn_keys(state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: rename :data:`LEGACY_FFN_KEYS` in place."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for old, new in LEGACY_FFN_KEYS:
            if key.endswith(old):
                state_dict[key[:-len(old)] + new] = state_dict.pop(key)


class MaskDiTDecoder(nn.Module):
    """MaskDiT's decoder (Zheng et al. 2023) after the backbone: the kept tokens enter through a
    timestep-conditioned layer (LayerNorm, adaLN shift and scale from the conditioning c, Linear to
    the decoder width Dd: the final layer's shape, as MaskDiT's decoder entry is modulated), are
    put back in place with a learned mask token at every masked position, the decoder's fixed 2-D
    position embedding is added to **every** token (the same with or without masking, so sampling
    runs the function that was trained), and ``decoder_depth`` dense DiT blocks run on all T tokens
    (caption context projected to Dd too); the result is projected back to D for the shared final
    layer."""

    def __init__(self, cfg: MicroDiTConfig, make_block) -> None:
        super().__init__()
        eps, dim = cfg.norm_eps, cfg.decoder_width
        self.x_in = FinalLayer(cfg.width, dim, eps)  # modulated entry, at any width (never the identity)
        self.y_in = _projection(cfg.width, dim, eps)
        self.x_out = _projection(dim, cfg.width, eps)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([make_block(dim, spec) for spec in cfg.decoder_specs()])

    def forward(self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor | None,
                keep_ids: torch.Tensor | None, pos: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """x (N, K, D) kept tokens (K = T without keep_ids), pos (T, Dd) -> (N, T, D)."""
        x = self.x_in(x, c)  # (N, K, Dd)
        if keep_ids is not None:
            full = self.mask_token.to(x.dtype).expand(x.shape[0], pos.shape[0], -1)  # (N, T, Dd)
            x = full.scatter(1, keep_ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)  # (N, T, Dd)
        x = x + pos.to(x.dtype)  # (N, T, Dd)
        x = run_blocks(self.blocks, x, c, self.y_in(y), y_mask, recompute)
        return self.x_out(x)  # (N, T, D)


class MicroDiT(nn.Module):
    """MicroDiT text-to-image diffusion transformer (experiments/README.md, Method: the network)."""

    def __init__(self, cfg: MicroDiTConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d, eps, p = cfg.width, cfg.norm_eps, cfg.patch_size
        self.patch_embed = patch_embed(cfg.in_channels, d, p)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, cfg.base_grid, cfg.base_grid, cfg.pos_interp_scale),
                             persistent=False)  # (T, D)
        self.timestep_embed = TimestepEmbedder(d, cfg.freq_dim)
        self.caption_proj = projection_mlp(cfg.caption_dim, d, eps)
        self.caption_block = CaptionBlock(d, cfg.head_dim, swiglu(d, swiglu_hidden(d, cfg.caption_mlp_ratio,
                                                                                   cfg.multiple_of)), eps)
        self.pooled_caption_proj = projection_mlp(d, d, eps)
        self.mixer = PatchMixer(cfg, self._make_block) if cfg.mixer_depth > 0 else None
        self.blocks = nn.ModuleList([self._make_block(d, spec) for spec in cfg.backbone_specs()])
        self.decoder = MaskDiTDecoder(cfg, self._make_block) if cfg.decoder_depth > 0 else None
        self.final = FinalLayer(d, p * p * cfg.in_channels, eps)
        self.activation_checkpointing = False  # recompute block activations in backward (saves memory)
        self.initialize_weights()
        self._register_load_state_dict_pre_hook(_rename_legacy_ffn_keys)

    def _make_block(self, dim: int, spec: BlockSpec) -> DiTBlock:
        cfg = self.cfg
        if spec.moe:
            ffn = ExpertChoiceMoE(dim, spec.hidden, cfg.num_experts, cfg.expert_capacity)
        elif cfg.ffn == "gelu":
            ffn = gelu_mlp(dim, spec.hidden)
        else:
            ffn = swiglu(dim, spec.hidden)
        return DiTBlock(dim, cfg.width, spec.attn_width, cfg.head_dim, ffn, cfg.norm_eps)

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The paper's initialisation (experiments/README.md, Method); afterwards the network output is exactly zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        conv = self.patch_embed.proj
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        nn.init.zeros_(conv.bias)
        for mlp in (self.timestep_embed.mlp[0], self.timestep_embed.mlp[2], self.caption_proj.fc1,
                    self.caption_proj.fc2, self.pooled_caption_proj.fc1, self.pooled_caption_proj.fc2):
            nn.init.normal_(mlp.weight, std=0.02)
        self.caption_block.init_weights(0.02)
        # mixer blocks: the depth-independent scale of the backbone's full depth; backbone: per block
        for block in self.mixer.blocks if self.mixer is not None else []:
            block.init_weights(0.02, out_std=0.02 / math.sqrt(2 * self.cfg.depth))
        for i, block in enumerate(self.blocks):
            block.init_weights(0.02, out_std=0.02 / math.sqrt(2 * (i + 1)))
        if self.decoder is not None:
            for block in self.decoder.blocks:
                block.init_weights(0.02, out_std=0.02 / math.sqrt(2 * self.cfg.depth))
            nn.init.normal_(self.decoder.mask_token, std=0.02)
            nn.init.zeros_(self.decoder.x_in.ada_ln[1].weight)  # the entry's modulation starts as the identity
            nn.init.zeros_(self.decoder.x_in.ada_ln[1].bias)
        for layer in (self.final.ada_ln[1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def save_pretrained(self, folder: str | Path, metadata: dict[str, str] | None = None) -> Path:
        """Write ``model.safetensors`` (the weights) and ``config.json`` (this network's config)
        into ``folder``: what :meth:`from_pretrained` loads, with no training state and nothing
        that runs code when read. ``metadata`` (the names the training data was encoded with,
        ``{"text_encoder": ..., "autoencoder": ...}``, and ``weights``: ``ema`` or ``raw``) goes
        into the safetensors header, read back by :func:`pretrained_metadata`."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / PRETRAINED_WEIGHTS), metadata=dict(metadata) if metadata else None)
        (folder / PRETRAINED_CONFIG).write_text(json.dumps(dataclasses.asdict(self.cfg), indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> MicroDiT:
        """The network saved by :meth:`save_pretrained` (e.g. a stage-end checkpoint folder of a
        run, or a copy of its two files), in eval mode."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config, weights = folder / PRETRAINED_CONFIG, folder / PRETRAINED_WEIGHTS
        try:
            cfg = MicroDiTConfig.from_dict(json.loads(config.read_text()), where=str(config))
        except (OSError, json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
            raise ValueError(f"{folder} is not a microdit export: {config} is missing or unreadable "
                             f"({str(err).splitlines()[0]})") from None
        try:
            state = load_file(str(weights))
        except Exception as err:  # noqa: BLE001  (OSError, or safetensors' own error on a truncated file)
            raise ValueError(f"{folder} is not a microdit export: {weights} is missing or unreadable "
                             f"({str(err).splitlines()[0]})") from None
        model = cls(cfg)
        model.load_state_dict(state)
        return model.to(device).eval()

    def set_resolution(self, input_size: list[int], pos_interp_scale: float) -> None:
        """Change the configured input size and position-embedding interpolation (a resolution
        stage); parameters do not depend on either."""
        cfg = dataclasses.replace(self.cfg, input_size=list(input_size), pos_interp_scale=pos_interp_scale)
        cfg.validate()
        self.cfg = cfg
        grid = cfg.base_grid
        self.pos_embed = sincos_pos_embed_2d(self.cfg.width, grid, grid, pos_interp_scale).to(self.pos_embed.device)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) of an H x W input."""
        p = self.cfg.patch_size
        return height // p, width // p

    def _pos_embed(self, grid: tuple[int, int], dim: int | None = None) -> torch.Tensor:
        """(T, dim) fixed position embedding of a token grid (dim: D, or the decoder's width)."""
        if grid == self.cfg.base_grid and dim is None:
            return self.pos_embed
        return sincos_pos_embed_2d(dim or self.cfg.width, grid, self.cfg.base_grid, self.cfg.pos_interp_scale).to(
            self.pos_embed.device)

    def _check_inputs(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor,
                      keep_ids: torch.Tensor | None, y_mask: torch.Tensor | None) -> None:
        cfg = self.cfg
        p = cfg.patch_size
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"x must be (N, {cfg.in_channels}, H, W) with H and W divisible by patch_size {p}, "
                             f"got {tuple(x.shape)}")
        n = x.shape[0]
        if c_noise.shape != (n,):
            raise ValueError(f"c_noise must be ({n},), got {tuple(c_noise.shape)}")
        if y.ndim != 3 or y.shape[0] != n or y.shape[2] != cfg.caption_dim:
            raise ValueError(f"y must be ({n}, L, {cfg.caption_dim}), got {tuple(y.shape)}")
        if y_mask is not None and y_mask.shape != y.shape[:2]:
            raise ValueError(f"y_mask must be {tuple(y.shape[:2])}, got {tuple(y_mask.shape)}")
        if keep_ids is not None:
            t = (x.shape[2] // p) * (x.shape[3] // p)
            if keep_ids.ndim != 2 or keep_ids.shape[0] != n or keep_ids.shape[1] > t:
                raise ValueError(f"keep_ids must be ({n}, K) with K <= {t} tokens, got {tuple(keep_ids.shape)}")

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        y: torch.Tensor,
        keep_ids: torch.Tensor | None = None,
        y_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """F(x, c_noise, y): x (N, C, H, W), c_noise (N,), y (N, L, Dy) -> (N, C, H, W).

        keep_ids (N, K): tokens that pass the backbone (None: all). y_mask (N, L): True at
        caption tokens that may be attended (None: all, as the reference).
        """
        self._check_inputs(x, c_noise, y, keep_ids, y_mask)
        h, w = self.grid(x.shape[2], x.shape[3])
        # timm's patch embedding returns a transposed view ((N, T, D) with stride 1 along T); made
        # contiguous once here, the residual stream stays row-major through every block instead of
        # each layer norm copying it (forward and backward). Bit-identical values.
        tokens = self.patch_embed(x).contiguous() + self._pos_embed((h, w)).to(x.dtype)  # (N, T, D)
        y = self.caption_block(self.caption_proj(y), y_mask)  # (N, L, D)
        if y_mask is None:
            pooled = y.mean(dim=1)  # (N, D)
        else:
            weights = y_mask.to(y.dtype).unsqueeze(-1)  # (N, L, 1)
            pooled = (y * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)  # (N, D)
        c = self.timestep_embed(c_noise) + self.pooled_caption_proj(pooled)  # (N, D)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        if self.mixer is not None:
            tokens = self.mixer(tokens, c, y, y_mask, keep_ids, recompute)  # (N, K, D)
        elif keep_ids is not None:
            tokens = gather_tokens(tokens, keep_ids)  # (N, K, D)
        tokens = run_blocks(self.blocks, tokens, c, y, y_mask, recompute)
        if self.decoder is not None:  # MaskDiT: predict every patch
            pos = self._pos_embed((h, w), self.cfg.decoder_width)  # (T, Dd)
            tokens = self.decoder(tokens, c, y, y_mask, keep_ids, pos, recompute)  # (N, T, D)
            keep_ids = None
        out = self.final(tokens, c)  # (N, K, p*p*C)
        if keep_ids is not None:
            out = scatter_tokens(out, keep_ids, h * w)  # (N, T, p*p*C)
        p = self.cfg.patch_size
        return rearrange(out, "n (h w) (p q c) -> n c (h p) (w q)", h=h, w=w, p=p, q=p)  # (N, C, H, W)


def pretrained_metadata(folder: str | Path) -> dict[str, str]:
    """The metadata :meth:`MicroDiT.save_pretrained` wrote into the export's safetensors header:
    the encoder names and ``weights`` (``ema`` or ``raw``); empty for an export written without
    them (e.g. a converted reference checkpoint). An unreadable file is named in one line."""
    from safetensors import safe_open

    path = Path(folder) / PRETRAINED_WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # noqa: BLE001  (safetensors' own error type is not importable by a stable name)
        raise ValueError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})") from None


def pretrained_encoders(folder: str | Path) -> dict[str, str]:
    """The encoder names an export recorded (``text_encoder``, ``autoencoder``; see
    :func:`pretrained_metadata`)."""
    return {k: v for k, v in pretrained_metadata(folder).items() if k in ENCODER_KEYS}
