"""Stateless building blocks of MicroDiT: attention, feed-forward layers, expert-choice MoE,
embedders and the DiT / caption transformer blocks."""

from microdit.nn.attention import CrossAttention, SelfAttention
from microdit.nn.blocks import CaptionBlock, DiTBlock, FinalLayer, modulate
from microdit.nn.embeddings import PatchEmbed, TimestepEmbedder, sincos_pos_embed_2d, timestep_sinusoid
from microdit.nn.mlp import GeluMLP, ProjectionMLP, SwiGLU, gelu_hidden, round_up, swiglu_hidden
from microdit.nn.moe import ExpertChoiceMoE, expert_capacity

__all__ = [
    "CaptionBlock",
    "CrossAttention",
    "DiTBlock",
    "ExpertChoiceMoE",
    "FinalLayer",
    "GeluMLP",
    "PatchEmbed",
    "ProjectionMLP",
    "SelfAttention",
    "SwiGLU",
    "TimestepEmbedder",
    "expert_capacity",
    "gelu_hidden",
    "modulate",
    "round_up",
    "sincos_pos_embed_2d",
    "swiglu_hidden",
    "timestep_sinusoid",
]
