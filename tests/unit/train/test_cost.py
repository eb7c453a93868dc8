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


def test_totals_are_the_checkpointed_ones_and_what_follows_from_them():
    meter = CostMeter(peak_flops=1e9, devices=2, price_per_device_hour=3.6)
    meter.load_state_dict({"flops": 3.6e12, "images": 720, "seconds": 3600.0})
    assert meter.totals() == {"flops": 3.6e12, "images": 720, "seconds": 3600.0, "device_hours": 2.0,
                              "dollars": pytest.approx(7.2), "mfu": pytest.approx(0.5), "images_per_s": 0.2}
