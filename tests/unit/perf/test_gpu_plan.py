"""The GPU plan: stages resolved and sized as the trainer does, costed by the roofline model."""

import json

import pytest

from microdit.cli.bench import main as bench_main
from microdit.devices import H100
from microdit.perf.gpu_plan import gpu_plan

from train_helpers import compose_config


def test_gpu_plan_of_a_two_stage_config(tmp_path):
    cfg = compose_config(["trainer.batch_size=64", "~stages.pretrain", "+stages={a: {steps: 100}, "
                          "b: {mask: {ratio: 0.0}, images: 6400}, c: {mask: {ratio: 0.5}, flops: 1e14}}"])
    plan = gpu_plan(cfg, H100, gpus=8)
    a, b, c = plan["stages"]
    assert (a["steps"], b["steps"], a["batch_per_device"]) == (100, 100, 8)
    per_step = c["train_flops"] / c["steps"]  # a FLOPs-sized stage: whole steps up to its FLOPs
    assert c["train_flops"] <= 1e14 < c["train_flops"] + per_step
    assert a["fused_bound_s"] < b["fused_bound_s"] and a["fused_bound_s"] < a["step_s"]  # nano at 8/GPU: host-bound
    assert plan["hours"] == pytest.approx(((a["step_s"] + b["step_s"]) * 100 + c["step_s"] * c["steps"]) / 3600)
    assert plan["dollars"] == pytest.approx(plan["hours"] * 8 * cfg.trainer.price_per_device_hour)
    bench_main(["--gpu-plan", "trainer.batch_size=64", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_plan.json").read_text())["gpus"] == 8
    assert "MFU if fully fused" in (tmp_path / "gpu_plan.md").read_text()
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(SystemExit):  # an earlier plan is never replaced
        bench_main(["--gpu-plan", "trainer.batch_size=32", "--out", str(tmp_path)])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == written

