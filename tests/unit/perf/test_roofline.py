"""The roofline estimate: traced FLOPs agree with the FLOP meter; the time model's arithmetic."""

import pytest
import torch

from microdit.devices import H100, DeviceModel
from microdit.masking import MaskConfig
from microdit.models import preset_config
from microdit.perf.bench_step import roofline_check
from microdit.perf.roofline import Op, step_time, trace_step
from microdit.train.flops import flops_per_image


@pytest.mark.parametrize("preset,ratio,strategy,block", [("nano", 0.0, "random", 1), ("micro", 0.75, "random", 1),
                                                          ("nano", 0.75, "block", 2)])
def test_traced_flops_match_the_meter(preset, ratio, strategy, block):
    cfg = preset_config(preset)
    ops, views = trace_step(cfg, 4, 8, MaskConfig(ratio, strategy, block))
    matmul = sum(o.flops for o in ops if o.kind == "matmul")
    attention_forward = sum(o.flops for o in ops if o.name == "attention")
    traced = matmul + 3 * attention_forward  # the meter counts training as 3 x forward
    meter = flops_per_image(cfg, cfg.base_grid, 8, MaskConfig(ratio, strategy, block)).train * 4
    assert traced == pytest.approx(meter, rel=0.03)
    assert views > 0 and any(o.name == "fused_adamw" for o in ops)
    assert all(o.bytes >= 0 for o in ops) and sum(o.bytes for o in ops if o.kind == "memory") > 0


def test_bf16_trace_moves_fewer_bytes_for_the_same_flops():
    cfg = preset_config("nano")
    fp32, _ = trace_step(cfg, 4, 8)
    bf16, _ = trace_step(cfg, 4, 8, dtype=torch.bfloat16)
    assert sum(o.flops for o in bf16) == pytest.approx(sum(o.flops for o in fp32))
    assert sum(o.bytes for o in bf16) < 0.8 * sum(o.bytes for o in fp32)


def test_step_time_arithmetic():
    ops = [Op("matmul", "mm", 2e9, 1e6), Op("memory", "add", 0.0, 4e9), Op("attention", "attention", 1e9, 1e3),
           Op("memory", "new_empty", 0.0, 0.0)]
    device = DeviceModel("toy", matmul_flops=1e12, attention_flops=5e11, bandwidth=1e12, kernel_s=1e-3,
                         dispatch_s=1e-4, asynchronous=False, peak_flops=1e12)
    est = step_time(ops, views=6, device=device)
    assert est["matmul_s"] == pytest.approx(2e-3 + 1e-3)  # compute-bound
    assert est["memory_s"] == pytest.approx(4e-3 + 1e-3)  # bandwidth-bound; the allocation costs nothing
    assert est["attention_s"] == pytest.approx(2e-3 + 1e-3)
    assert est["host_s"] == pytest.approx(10 * 1e-4)
    assert est["seconds"] == pytest.approx(est["kernels_s"] + est["host_s"])
    assert est["fused_bound_s"] == pytest.approx(6e-3)
    slow_host = DeviceModel("toy-async", 1e12, 5e11, 1e12, 1e-3, 1e-2, True, 1e12)
    assert step_time(ops, 6, slow_host)["seconds"] == pytest.approx(10 * 1e-2)  # host-bound: kernels hide behind it


def test_roofline_check_compares_with_measured_rows():
    rows = [{"preset": "nano", "batch": 4, "mask_ratio": 0.75, "strategy": "random", "block_size": 1, "step_s": 0.5}]
    out = roofline_check(rows, 8, H100)
    (row,) = out["rows"]
    ops, views = trace_step(preset_config("nano"), 4, 8, MaskConfig(0.75))
    assert row["predicted_s"] == step_time(ops, views, H100)["seconds"] > 0
    assert row["ratio"] == pytest.approx(row["predicted_s"] / 0.5)
    assert out["device"] == vars(H100)

