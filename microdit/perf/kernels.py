"""The kernel-sum bound: every kernel of a step timed alone, at the step's own shapes, on this device.

The roofline model (:mod:`microdit.perf.roofline`) prices a kernel from three device figures
(the matmul rate of a 2048^3 GEMM, the bandwidth of a 128 MiB add, the cost of a tiny add). On a
small CPU model those figures are off in both directions: a 32 x 128 x 128 GEMM runs far below
the large-GEMM rate, a layer norm costs more fixed time than an add, and a tensor that fits in
cache moves faster than DRAM allows. This bound replaces the three figures by measurement of the
step's own kernels: every aten call the step makes is recorded while it runs (forward, backward,
clipping, the guard, the fused AdamW update), each distinct call (function, shapes, strides,
dtypes, scalar arguments) is replayed alone on fresh tensors of those shapes (floating inputs
random, integer and boolean inputs zero, which keeps every index in range) and timed (median of
repeats after a warm-up call), and the bound is the sum over the step's calls.

What it leaves out is what an eager step adds on top of its kernels (Python, the autograd engine's
bookkeeping, the allocator) and what running in a sequence costs them: a kernel replayed alone
finds its inputs hot in cache and its output on mapped pages. It is measured from kernels only and
never fitted to the step times it is compared with, so it stays a bound for the eager step
(measured / bound >= 1 up to noise); a compiled step runs other (fused) kernels, so its bound is
not this one.

:func:`in_sequence_time` splits the gap: the same calls timed where they run, inside the real step
(each aten call timed around its kernel, the way the replay times it). Step time minus that is
Python and the autograd engine around the kernels; that minus the bound is what running in
sequence costs the kernels themselves (inputs no longer hot in cache, outputs on freshly mapped
pages, the layouts the step hands them). Both parts are measured, neither is exact: the timing
mode's own Python disturbs the caches a little.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from microdit.perf.roofline import TensorSpec


def _real(value, device: torch.device):
    if isinstance(value, TensorSpec):
        stride = value.stride if len(value.stride) == len(value.shape) else torch.empty(value.shape).stride()
        size = sum((s - 1) * st for s, st in zip(value.shape, stride, strict=True)) + 1
        base = torch.zeros(max(size, 1), dtype=value.dtype, device=device)
        if value.dtype.is_floating_point:
            base.normal_()
        return base.as_strided(value.shape, stride)
    if isinstance(value, torch.device):
        return device
    return value


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_by(items: list, key):
    """The item whose ``key`` is the median (the upper one of an even count): a whole measurement,
    its parts summing to its total, rather than a median of each part."""
    return sorted(items, key=key)[len(items) // 2]


def _key(call) -> str:
    return repr(call)


def replay_time(calls: list[tuple], device: torch.device | str = "cpu", repeats: int = 5) -> dict:
    """Sum of each call's time alone (distinct calls timed once, then counted as often as they
    occur), per aten name, and the calls that could not be replayed (counted at 0 s: a looser bound)."""
    device = torch.device(device)
    cache: dict[str, float | None] = {}
    by_name: dict[str, float] = {}
    failed: list[str] = []
    for call in calls:
        func, args, kwargs = call
        key = _key(call)
        if key not in cache:
            try:
                real_args, real_kwargs = tree_map(lambda v: _real(v, device), (args, kwargs))
                cache[key] = _time(lambda f=func, a=real_args, k=real_kwargs: f(*a, **k), repeats)
            except Exception:  # noqa: BLE001 - an op that cannot run on made-up inputs is reported, not fatal
                cache[key] = None
        seconds = cache[key]
        name = func.overloadpacket.__name__
        if seconds is None:
            failed.append(name)
            continue
        by_name[name] = by_name.get(name, 0.0) + seconds
    return {"seconds": sum(by_name.values()), "by_name": by_name, "calls": len(calls), "distinct": len(cache),
            "failed": sorted(set(failed))}


class _InSequence(TorchDispatchMode):
    """Times every aten call where the step makes it (per aten name)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_name: dict[str, float] = {}
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        seconds = time.perf_counter() - start
        name = func.overloadpacket.__name__
        self.by_name[name] = self.by_name.get(name, 0.0) + seconds
        self.calls += 1
        return out


def in_sequence_time(step, repeats: int = 3) -> dict:
    """The kernels of ``step()`` timed in place, in the real step (the run whose total is the
    median of ``repeats``): what its kernels take in sequence, as :func:`replay_time` reports them."""
    runs = []
    for _ in range(repeats):
        mode = _InSequence()
        with mode:
            step()
        runs.append(mode)
    mode = median_by(runs, lambda m: sum(m.by_name.values()))
    return {"seconds": sum(mode.by_name.values()), "by_name": mode.by_name, "calls": mode.calls}
