"""microdit-bench's pieces on tiny sizes: they run and report consistent numbers (no timing asserted)."""

import torch

from microdit.benchmarks import bench_sampler, bench_step, one_hot_moe, summary_markdown
from microdit.nn import ExpertChoiceMoE


def test_one_hot_formulation_equals_our_moe():
    moe = ExpertChoiceMoE(16, 32, 4, 2.0).double()
    moe.init_weights(0.3, 0.3)
    x = torch.randn(2, 24, 16, dtype=torch.float64)
    torch.testing.assert_close(one_hot_moe(moe, x), moe(x), rtol=1e-12, atol=1e-12)


def test_bench_report(tmp_path):
    steps = [bench_step("nano", r, batch=4, repeats=1, warmup=0, peak=1e11) for r in (0.0, 0.75)]
    assert steps[1]["flops_per_step"] < steps[0]["flops_per_step"] and steps[0]["mfu"] > 0
    sampler = bench_sampler("nano", [2], images=2)
    assert set(sampler["by_steps"][2]) == {"cfg_batched", "cfg_two_passes"}
    moe = {"tokens": 8, "gather": {"time_s": 1.0, "peak_mib": 2.0, "saved_mib": 1.0},
           "one_hot": {"time_s": 2.0, "peak_mib": 4.0, "saved_mib": 2.0}, "speedup": 2.0}
    report = summary_markdown({"quick": True, "threads": 2, "matmul_peak_flop_per_s": 1e11, "steps": steps,
                               "masking": [{"preset": "nano", "mask_ratio": 0.75, "strategy": "random",
                                            "time_ratio": 0.5, "flop_ratio": 0.45}],
                               "moe": [moe], "reader": {"samples": 10, "build_and_encode_s": 1.0,
                                                        "samples_per_s": {0: 100.0}}, "sampler": sampler})
    assert "| nano | 0.75 | random |" in report and "2.00x" in report


def test_targets_are_judged_from_the_measurements():
    from microdit.benchmarks import targets

    def step(preset, ratio, ips, mfu):
        return {"preset": preset, "mask_ratio": ratio, "strategy": "random", "images_per_s": ips, "mfu": mfu}

    results = {"steps": [step("micro", 0.0, 60.0, 0.65), step("micro", 0.75, 120.0, 0.6)],
               "masking": [{"preset": "micro", "mask_ratio": 0.75, "strategy": "random", "time_ratio": 0.5,
                            "flop_ratio": 0.46}],
               "moe": [{"tokens": 256, "speedup": 3.5, "peak_ratio": 1.2}],
               "reader": {"samples_per_s": {0: 1000.0}}}
    met = {t["target"]: t["met"] for t in targets(results)}
    assert met["micro training step at >= 60% of the measured fp32 matmul peak"]
    assert met["micro step time at ratio 0.75 within 15% of the FLOP-predicted"]  # 0.5 / 0.46 = 1.09
    assert met["MoE >= 3x faster than one-hot at T = 256"]
    assert not met["MoE >= 4x less peak memory than one-hot at T = 256"]
    assert not met["reader >= 10x what a micro step (ratio 0.75) consumes"]  # 1000 / 120 = 8.3
