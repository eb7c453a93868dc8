"""Import state dicts of the reference implementation (SonyResearch/micro_diffusion) into MicroDiT.

The mapping is by key prefix and is strict: every reference key must map onto one of ours with
the same shape, and every one of ours must be provided. The reference's fixed ``pos_embed`` and
zero ``mask_token`` are not parameters here; they are checked (same sin-cos values, all zeros)
and dropped. A SwiGLU's separate gate and value projections (``mlp.w1.weight``,
``mlp.w2.weight``) are stacked into the fused input projection ``mlp.fc1.weight`` of our SwiGLU
(timm's ``GluMlp``), its output projection ``mlp.w3.weight`` is our ``mlp.fc2.weight``.
"""

from __future__ import annotations

import torch

from microdit.models.config import MicroDiTConfig
from microdit.models.microdit import MicroDiT
from microdit.nn.embeddings import sincos_pos_embed_2d

# (reference prefix, our prefix), first match wins; patch_mixer_map_* before patch_mixer.
PREFIXES: tuple[tuple[str, str], ...] = (
    ("x_embedder.proj.", "patch_embed.proj."),
    ("t_embedder.mlp.", "timestep_embed.mlp."),
    ("y_embedder.y_proj.", "caption_proj."),
    ("y_emb_preprocess.", "caption_block."),
    ("pooled_y_emb_process.", "pooled_caption_proj."),
    ("patch_mixer_map_xin.", "mixer.x_in."),
    ("patch_mixer_map_xout.", "mixer.x_out."),
    ("patch_mixer_map_y.", "mixer.y_in."),
    ("patch_mixer.", "mixer.blocks."),
    ("blocks.", "blocks."),
    ("final_layer.norm_final.", "final.norm."),
    ("final_layer.adaLN_modulation.", "final.ada_ln."),
    ("final_layer.linear.", "final.linear."),
)
# Renamed parts inside a DiT block.
INNER = ((".adaLN_modulation.", ".ada_ln."), (".cross_attn.q_linear.", ".cross_attn.q."),
         (".cross_attn.kv_linear.", ".cross_attn.kv."), (".mlp.w3.weight", ".mlp.fc2.weight"))
FIXED = ("pos_embed", "mask_token")
FUSED = {".w1.weight": 0, ".w2.weight": 1}  # SwiGLU gate / value -> halves of .fc1.weight


class ReferenceImportError(ValueError):
    """A reference state dict that does not fit the target MicroDiT config."""


def our_key(ref_key: str) -> str | None:
    """Our name for a reference parameter name, or None if it has no counterpart."""
    for ref_prefix, prefix in PREFIXES:
        if ref_key.startswith(ref_prefix):
            key = prefix + ref_key[len(ref_prefix):]
            for old, new in INNER:
                key = key.replace(old, new)
            return key
    return None


def _check_fixed(ref: dict[str, torch.Tensor], cfg: MicroDiTConfig) -> None:
    if "pos_embed" in ref:
        expected = sincos_pos_embed_2d(cfg.width, cfg.base_grid, cfg.base_grid, cfg.pos_interp_scale).unsqueeze(0)
        got = ref["pos_embed"]
        if tuple(got.shape) != tuple(expected.shape):
            raise ReferenceImportError(f"reference key 'pos_embed' has shape {tuple(got.shape)}, expected "
                                       f"{tuple(expected.shape)} for this config")
        err = (got.float() - expected).abs().max().item()
        if err > 1e-4:
            raise ReferenceImportError(f"reference key 'pos_embed' differs from the 2-D sin-cos embedding of this "
                                       f"config by up to {err:.3g} (input_size {cfg.input_size}, pos_interp_scale "
                                       f"{cfg.pos_interp_scale}): wrong config for this checkpoint")
    if "mask_token" in ref and ref["mask_token"].abs().max().item() != 0:
        raise ReferenceImportError("reference key 'mask_token' is not all zeros; MicroDiT's mask token is a fixed zero")


def convert_reference_state_dict(ref: dict[str, torch.Tensor], cfg: MicroDiTConfig) -> dict[str, torch.Tensor]:
    """Map a reference state dict onto the parameter names of ``MicroDiT(cfg)``.

    Raises ReferenceImportError naming the first offending key: unknown key, wrong shape, or
    a parameter of ours that the reference dict lacks.
    """
    with torch.device("meta"):
        target = MicroDiT(cfg).state_dict()
    _check_fixed(ref, cfg)
    out: dict[str, torch.Tensor] = {}
    halves: dict[str, list] = {}
    for ref_key, value in ref.items():
        if ref_key in FIXED:
            continue
        key = our_key(ref_key)
        suffix = next((s for s in FUSED if key is not None and key.endswith(s)), None)
        fused = None if suffix is None else key[:-len(suffix)] + ".fc1.weight"
        if fused in target:
            key, shape = fused, (target[fused].shape[0] // 2, *target[fused].shape[1:])
            halves.setdefault(fused, [None, None])[FUSED[suffix]] = value
        elif key is None or key not in target:
            raise ReferenceImportError(f"reference key {ref_key!r} has no counterpart in this MicroDiT config "
                                       f"(mapped to {key!r})")
        else:
            shape = tuple(target[key].shape)
            out[key] = value
        if tuple(value.shape) != shape:
            raise ReferenceImportError(f"reference key {ref_key!r} has shape {tuple(value.shape)}, but {key!r} "
                                       f"expects {tuple(shape)}{' (one half)' if key in halves else ''}")
    out.update({key: torch.cat(pair) for key, pair in halves.items() if None not in pair})
    missing = [k for k in target if k not in out]
    if missing:
        raise ReferenceImportError(f"the reference state dict lacks {len(missing)} parameter(s) of this config, "
                                   f"first: {missing[:5]}")
    return out
