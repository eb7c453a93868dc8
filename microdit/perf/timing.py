"""Timing tools of the benchmarks: a device sync, the median of timed repeats, the matmul peak
probe (the MFU reference), this CPU's roofline figures and a count of host synchronisations."""

from __future__ import annotations

import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from microdit.devices import DeviceModel

CPU = torch.device("cpu")
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, repeats: int, warmup: int, device: torch.device = CPU) -> float:
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class PeakProbe:
    """One timing of a large matmul on ``device`` (fp32 2048^3 on CPU, bf16 8192^3 on CUDA): the
    MFU reference, probed between the steps it is compared with."""

    def __init__(self, device: torch.device = CPU) -> None:
        size, dtype = (2048, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
        self.a = torch.randn(size, size, device=device, dtype=dtype)
        self.b = torch.randn(size, size, device=device, dtype=dtype)
        self.flops, self.device = 3 * 2 * size**3, device
        self()

    def __call__(self) -> float:
        """FLOP/s of one timed burst of three matmuls."""
        return self.flops / median_time(lambda: [self.a @ self.b for _ in range(3)], 1, 0, self.device)


def cpu_device_model() -> DeviceModel:
    """This CPU's figures for the roofline model, measured: best fp32 matmul rate, flash
    attention rate, bandwidth of an in-place add over 128 MiB arrays, and the fixed cost of a tiny
    operation (per kernel and per dispatch: nothing is asynchronous on a CPU)."""
    probe = PeakProbe()
    peak = max(probe() for _ in range(5))
    q = torch.randn(32, 8, 64, 32)
    attention = 4 * 32 * 8 * 64 * 64 * 32 / median_time(lambda: F.scaled_dot_product_attention(q, q, q), 10, 2)
    a, b = torch.randn(2**25), torch.randn(2**25)
    bandwidth = 3 * a.numel() * 4 / median_time(lambda: a.add_(b), 5, 1)  # read a, b; write a
    small = torch.randn(8)
    tiny = median_time(lambda: [small.add_(1.0) for _ in range(1000)], 5, 1) / 1000
    return DeviceModel("this CPU, fp32 (measured)", peak, attention, bandwidth, tiny, tiny, False, peak)


def fresh_pages(step, repeats: int = 3) -> float | None:
    """Minor page faults per ``step()`` (mean of ``repeats``; None where the platform has no
    getrusage): pages the step's outputs land on fresh from the OS, because the allocator gave the
    previous step's memory back (glibc unmaps large blocks on free), each zeroed on first touch."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / repeats


def count_host_syncs(step, device: torch.device) -> int | None:
    """Synchronising CUDA calls made by one ``step()`` (None on CPU, where nothing is asynchronous)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)
