"""Roofline estimate of a training step's time from its operations, without running it.

The step (EDM loss forward, backward, fused AdamW) of a config is traced on the ``meta`` device:
every aten operation is recorded with its FLOPs (matmuls, via torch's flop counter formulas) and
the bytes it reads and writes (everything else; views move nothing). Attention is one fused
(flash) kernel: ``scaled_dot_product_attention`` is traced as a single operation whose score
matrix never reaches memory. A :class:`DeviceModel` turns the trace into time: each kernel takes
``max(flops / matmul rate, bytes / bandwidth) + kernel overhead``; on an asynchronous device
(CUDA) the host's per-operation dispatch time overlaps with the kernels, on a CPU it adds.

Calibrated on this CPU against measured step times (``microdit-bench`` measures the CPU's
figures and reports predicted / measured), and used with an H100's vendor figures and stated
efficiencies for the GPU plan (``microdit-bench --gpu-plan``): an expectation, not a measurement.
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from microdit.devices import DeviceModel
from microdit.diffusion import EDMConfig, edm_loss
from microdit.masking import MaskConfig, sample_keep_ids
from microdit.models import MicroDiT
from microdit.models.config import MicroDiTConfig

VIEWS = {"view", "_unsafe_view", "t", "transpose", "expand", "detach", "unsqueeze", "squeeze", "split", "alias",
         "as_strided", "slice", "select", "permute", "unbind", "chunk", "split_with_sizes", "_reshape_alias",
         "reshape", "lift_fresh"}
ALLOCATIONS = {"empty", "new_empty", "empty_like", "empty_strided"}  # no traffic
FILLS = {"zeros", "new_zeros", "zeros_like", "fill_", "zero_"}  # write their output only


@dataclasses.dataclass
class Op:
    """One recorded kernel: FLOPs done and bytes moved; ``kind`` is matmul, attention or memory."""

    kind: str
    name: str
    flops: float
    bytes: float


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Shape, strides and dtype of a recorded tensor: enough to make a real one to replay a call on."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @staticmethod
    def of(value):
        if isinstance(value, torch.Tensor):
            return TensorSpec(tuple(value.shape), tuple(value.stride()), value.dtype)
        return value


def record_calls(fn) -> list[tuple]:
    """Every aten call ``fn()`` makes, in order, as ``(function, args, kwargs)`` with tensors as
    :class:`TensorSpec` (on real tensors: the calls an eager step really makes, backward included)."""
    recorder = _Recorder(calls=True)
    with recorder:
        fn()
    return recorder.calls


def _nbytes(values) -> int:
    return sum(v.numel() * v.element_size() for v in torch.utils._pytree.tree_leaves(values)
               if isinstance(v, torch.Tensor))


class _Recorder(TorchDispatchMode):
    """Records every operation's cost; with ``calls``, also each call (aten function, arguments
    with tensors as :class:`TensorSpec`), so that it can be replayed alone (:mod:`microdit.perf.kernels`)."""

    def __init__(self, calls: bool = False) -> None:
        super().__init__()
        self.ops: list[Op] = []
        self.views = 0
        self.calls: list | None = [] if calls else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.calls is not None:
            self.calls.append((func, *torch.utils._pytree.tree_map(TensorSpec.of, (args, kwargs))))
        packet = func.overloadpacket
        name = packet.__name__
        if name in VIEWS:
            self.views += 1
        elif name in ALLOCATIONS or name in FILLS:
            self.ops.append(Op("memory", name, 0.0, _nbytes(out) if name in FILLS else 0))
        elif packet in flop_registry:
            self.ops.append(Op("matmul", name, flop_registry[packet](*args, **kwargs, out_val=out),
                               _nbytes((args, kwargs)) + _nbytes(out)))
        else:
            self.ops.append(Op("memory", name, 0.0, _nbytes((args, kwargs)) + _nbytes(out)))
        return out


class _FusedAttention(torch.autograd.Function):
    """Shape-only stand-in for a fused (flash) attention kernel that records its cost: forward
    4·N·H·T·L·hd FLOPs reading q, k, v and writing the output; backward 2.5x that (it
    recomputes the scores)."""

    @staticmethod
    def forward(ctx, q, k, v, recorder):
        n, h, t, d = q.shape
        ctx.cost = (4 * n * h * t * k.shape[2] * d, 2 * _nbytes((q, k, v)))
        ctx.shapes, ctx.recorder = (q.shape, k.shape, v.shape), recorder
        recorder.ops.append(Op("attention", "attention", *ctx.cost))
        return q.new_empty(n, h, t, v.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        flops, moved = ctx.cost
        ctx.recorder.ops.append(Op("attention", "attention_backward", 2.5 * flops, 2.5 * moved))
        return *(grad.new_empty(s) for s in ctx.shapes), None


def trace_step(cfg: MicroDiTConfig, batch: int, caption_len: int, mask: MaskConfig | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[list[Op], int]:
    """Operations of one training step of ``MicroDiT(cfg)`` at ``batch`` (the network's weights
    and activations in ``dtype``; preconditioning, loss and AdamW state in fp32) and the number of
    view operations. bf16 here is a lower bound on autocast's traffic, which keeps norms in fp32
    and adds casts."""
    with torch.device("meta"):
        model = MicroDiT(cfg).to(dtype)
    x = torch.zeros(batch, cfg.in_channels, *cfg.input_size, device="meta")
    y = torch.zeros(batch, caption_len, cfg.caption_dim, device="meta")
    keep = None if mask is None else sample_keep_ids(batch, cfg.base_grid, mask, device="meta")

    def net(x_in, c_noise, y_in, **kwargs):
        return model(x_in.to(dtype), c_noise.to(dtype), y_in.to(dtype), **kwargs).float()

    recorder = _Recorder()

    def fused_attention(q, k, v, attn_mask=None):
        return _FusedAttention.apply(q, k, v, recorder)

    with mock.patch.object(F, "scaled_dot_product_attention", fused_attention), recorder:
        loss = edm_loss(net, x, y, EDMConfig(), cfg.patch_size, keep_ids=keep).mean()
        loss.backward()
    params = sum(p.numel() for p in model.parameters())
    adamw = params * 4 * 7  # fused AdamW on fp32 master weights: read g, p, m, v; write p, m, v
    recorder.ops.append(Op("memory", "fused_adamw", 0.0, adamw))
    return recorder.ops, recorder.views


def step_time(ops: list[Op], views: int, device: DeviceModel) -> dict:
    """Predicted step time on ``device`` and where it goes (allocations cost no kernel)."""
    parts = {"matmul": 0.0, "attention": 0.0, "memory": 0.0}
    for op in ops:
        if op.name in ALLOCATIONS:
            continue
        rate = device.attention_flops if op.kind == "attention" else device.matmul_flops
        parts[op.kind] += max(op.flops / rate, op.bytes / device.bandwidth) + device.kernel_s
    kernels = sum(parts.values())
    host = (len(ops) + views) * device.dispatch_s
    seconds = max(kernels, host) if device.asynchronous else kernels + host
    return {"seconds": seconds, "kernels_s": kernels, "host_s": host, **{f"{k}_s": v for k, v in parts.items()},
            "fused_bound_s": parts["matmul"] + parts["attention"]}
