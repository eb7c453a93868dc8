"""Building blocks of MicroDiT: attention, feed-forward layers, expert-choice MoE, embedders and
the DiT / caption transformer blocks (timm's layers wherever they compute the same function)."""

from microdit.nn.attention import CrossAttention, SelfAttention
from microdit.nn.blocks import CaptionBlock, DiTBlock, FinalLayer, modulate
from microdit.nn.embeddings import TimestepEmbedder, patch_embed, sincos_pos_embed_2d, timestep_sinusoid
from microdit.nn.mlp import gelu_hidden, gelu_mlp, init_ffn, projection_mlp, round_up, swiglu, swiglu_hidden
from microdit.nn.moe import ExpertChoiceMoE, expert_capacity

__all__ = [
    "CaptionBlock",
    "CrossAttention",
    "DiTBlock",
    "ExpertChoiceMoE",
    "FinalLayer",
    "SelfAttention",
    "TimestepEmbedder",
    "expert_capacity",
    "gelu_hidden",
    "gelu_mlp",
    "init_ffn",
    "modulate",
    "patch_embed",
    "projection_mlp",
    "round_up",
    "sincos_pos_embed_2d",
    "swiglu",
    "swiglu_hidden",
    "timestep_sinusoid",
]
