"""One table of device figures: the peak FLOP/s that MFU is measured against (trainer, cost
notebook) and the device models of the roofline (:mod:`microdit.perf.roofline`).

The CPU figure is this project's 2-core development machine (fp32 matmul, measured); a run on
another CPU should set ``trainer.peak_flops`` (``microdit-bench`` measures it). The GPU figure
is the vendor's dense bf16 peak of an H100 SXM, the paper's hardware.
"""

from __future__ import annotations

import dataclasses

PEAK_FLOPS = {
    "cpu": 130e9,  # fp32 matmul of the 2-core development machine (measured: 110-180 GFLOP/s)
    "cuda": 989e12,  # H100 SXM, dense bf16 (vendor figure)
}


def peak_flops(device_type: str) -> float:
    """The MFU reference of a device type (``cpu`` or ``cuda``)."""
    if device_type not in PEAK_FLOPS:
        raise ValueError(f"no peak FLOP/s known for device type {device_type!r}; set trainer.peak_flops")
    return PEAK_FLOPS[device_type]


@dataclasses.dataclass
class DeviceModel:
    """What a device does per second: ``matmul_flops`` (achievable on the step's GEMMs),
    ``attention_flops`` (fused attention), ``bandwidth`` (bytes/s of elementwise kernels);
    ``kernel_s`` fixed cost per kernel; ``dispatch_s`` host time per operation (views included);
    ``asynchronous``: host dispatch overlaps with kernels; ``peak_flops``: the MFU reference."""

    name: str
    matmul_flops: float
    attention_flops: float
    bandwidth: float
    kernel_s: float
    dispatch_s: float
    asynchronous: bool
    peak_flops: float


# Vendor figures of an H100 SXM (989 TFLOP/s dense bf16, 3.35 TB/s HBM3) times assumed
# efficiencies: 70% on the step's GEMMs, 35% in flash attention (head_dim 64), 80% of the
# bandwidth; 4 us per kernel, 10 us of eager host dispatch per operation.
H100 = DeviceModel("H100 SXM, bf16 (vendor peak x assumed efficiency)", 0.70 * PEAK_FLOPS["cuda"],
                   0.35 * PEAK_FLOPS["cuda"], 0.80 * 3.35e12, 4e-6, 10e-6, True, PEAK_FLOPS["cuda"])
