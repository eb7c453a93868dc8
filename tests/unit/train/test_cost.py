"""The cost meter: device-hours, dollars and MFU."""

import math

import pytest

from microdit.train.cost import CostMeter


def test_cost_meter():
    meter = CostMeter(peak_flops=1e9, devices=2, price_per_device_hour=3.6)
    meter.seconds = 3600.0
    assert meter.device_hours == 2 and meter.dollars == pytest.approx(7.2)
    assert meter.mfu(1e9, 1.0) == pytest.approx(0.5)
    assert not math.isnan(meter.mfu(0, 0))

