"""Feed-forward layers, built from timm's (``timm.layers.GluMlp`` / ``Mlp``): SwiGLU (the dense
FFN of MicroDiT), a bias-free GELU MLP (the dense ablation) and the biased projection MLP of the
embedders; their hidden widths and their initialisation.

Shapes: N batch, T tokens, D width, Hf hidden width.
"""

from __future__ import annotations

from functools import partial

from timm.layers import GluMlp, Mlp
from torch import nn

GELU_TANH = partial(nn.GELU, approximate="tanh")


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return multiple * ((value + multiple - 1) // multiple)


def swiglu_hidden(dim: int, ratio: float, multiple_of: int) -> int:
    """Hidden width of a SwiGLU FFN: round_up(int(2/3 * int(dim * ratio)), multiple_of)."""
    return round_up(int(2 * int(dim * ratio) / 3), multiple_of)


def gelu_hidden(dim: int, ratio: float, multiple_of: int) -> int:
    """Hidden width of a GELU MLP (and of an MoE expert): round_up(int(dim * ratio), multiple_of)."""
    return round_up(int(dim * ratio), multiple_of)


def swiglu(dim: int, hidden: int) -> GluMlp:
    """SwiGLU ``fc2(silu(x W1) * x W2)``, bias-free, as timm's ``GluMlp``: one fused input matrix
    ``fc1`` = [W1; W2] (Hf rows each, the gate first), one GEMM of twice the width."""
    return GluMlp(dim, 2 * hidden, act_layer=nn.SiLU, bias=False, gate_last=False)


def gelu_mlp(dim: int, hidden: int) -> Mlp:
    """``fc2(gelu_tanh(fc1 x))``, bias-free (timm's ``Mlp``): the dense GELU alternative to SwiGLU."""
    return Mlp(dim, hidden, act_layer=GELU_TANH, bias=False)


def projection_mlp(in_dim: int, dim: int, eps: float = 1e-6) -> Mlp:
    """``fc2(LN(gelu_tanh(fc1 x)))`` with biases on the Linears and a bias-free LayerNorm (timm's
    ``Mlp`` with a norm layer, as the reference builds it): the caption projection and the
    pooled-caption MLP."""
    return Mlp(in_dim, dim, dim, act_layer=GELU_TANH, norm_layer=partial(nn.LayerNorm, eps=eps, bias=False))


def init_ffn(ffn: nn.Module, std: float, out_std: float) -> None:
    """Truncated-normal init of a dense FFN (the reference's): ``std`` for the input projection
    (a SwiGLU's gate W1), ``out_std`` for a SwiGLU's value projection W2 and every output
    projection. Any other FFN (the MoE) initialises itself: ``ffn.init_weights(std, out_std)``.
    torch's ``trunc_normal_``, not timm's: timm's draws other values from the same seed, which
    would move every seeded run and the committed loss baseline."""
    if isinstance(ffn, GluMlp):
        hidden = ffn.fc1.out_features // 2
        nn.init.trunc_normal_(ffn.fc1.weight[:hidden], std=std)
        nn.init.trunc_normal_(ffn.fc1.weight[hidden:], std=out_std)
        nn.init.trunc_normal_(ffn.fc2.weight, std=out_std)
    elif isinstance(ffn, Mlp):
        nn.init.trunc_normal_(ffn.fc1.weight, std=std)
        nn.init.trunc_normal_(ffn.fc2.weight, std=out_std)
    else:
        ffn.init_weights(std, out_std)
