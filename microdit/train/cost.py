"""The cost meter: FLOPs, images, wall time, throughput, MFU, device-hours and dollars."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class CostMeter:
    """Cumulative cost of a run (carried across resumes through the checkpoint)."""

    peak_flops: float  # per device
    devices: int
    price_per_device_hour: float
    flops: float = 0.0
    images: int = 0
    seconds: float = 0.0  # training wall time, summed over sessions

    def __post_init__(self) -> None:
        self._mark = time.perf_counter()

    def add(self, images: int, flops: float) -> None:
        """Account one optimizer step."""
        now = time.perf_counter()
        self.seconds += now - self._mark
        self._mark = now
        self.images += images
        self.flops += flops

    def restart_clock(self) -> None:
        """Exclude time spent outside training steps (checkpointing, sampling) from the meter."""
        self._mark = time.perf_counter()

    @property
    def device_hours(self) -> float:
        """Wall time x devices, in hours."""
        return self.seconds * self.devices / 3600

    @property
    def dollars(self) -> float:
        """Device-hours at the configured price."""
        return self.device_hours * self.price_per_device_hour

    def mfu(self, flops: float, seconds: float) -> float:
        """Model FLOPs utilisation of ``flops`` done in ``seconds`` on all devices."""
        return flops / max(seconds, 1e-12) / (self.peak_flops * self.devices)

    def totals(self) -> dict:
        """The run so far, as its summary reports it: the checkpointed totals, device-hours,
        dollars, MFU and images per second."""
        return {**self.state_dict(), "device_hours": self.device_hours, "dollars": self.dollars,
                "mfu": self.mfu(self.flops, self.seconds), "images_per_s": self.images / max(self.seconds, 1e-9)}

    def state_dict(self) -> dict:
        """Totals to checkpoint."""
        return {"flops": self.flops, "images": self.images, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        """Restore totals."""
        self.flops, self.images, self.seconds = state["flops"], state["images"], state["seconds"]
