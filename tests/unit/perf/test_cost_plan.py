"""The cost plan (microdit-plan): its JSON, its totals, Fig 6 against the paper's compute axis."""

import json

import pytest

from microdit.cli import plan as plan_cli
from microdit.eval.results import load_paper_numbers
from microdit.experiment import sweep_points
from microdit.perf.cost_plan import cost_plan


def plan_json(argv, capsys) -> dict:
    plan_cli.main(["--json", *argv])
    return json.loads(capsys.readouterr().out)


def test_json_layout_and_totals(capsys):
    plan = plan_json(["--mfu", "0.5", "--price", "2", "experiment=paper_recipe"], capsys)
    run = plan["runs"][0]
    assert run["overrides"] == ["experiment=paper_recipe"] and plan["total"]["runs"] == 1
    assert [s["name"] for s in run["stages"]] == ["masked", "unmasked", "masked-hires", "unmasked-hires"]
    assert [s["steps"] for s in run["stages"]] == [250000, 30000, 50000, 5000]
    assert all(s["images"] == 2048 * s["steps"] for s in run["stages"])
    assert run["flops"] == pytest.approx(sum(s["flops"] for s in run["stages"]))
    assert run["flops_paper"] == pytest.approx(3.45e20, rel=2e-3) and run["flops"] < run["flops_paper"]  # MoE einsums
    assert run["gpu_hours"] == pytest.approx(run["flops"] / (989e12 * 0.5) / 3600)
    assert run["cost"] == pytest.approx(2 * run["gpu_hours"]) and plan["total"]["cost"] == pytest.approx(run["cost"])


def test_fig6_sits_on_the_papers_compute_axis(capsys):
    axis = load_paper_numbers()["fig6"]["compute_axis_exaflops"]
    plan = plan_json(["-m", "experiment=fig6_naive,fig6_maskdit,fig6_deferred", "trainer.seed=0"], capsys)
    assert plan["total"]["runs"] == 15
    got = {}
    for run in plan["runs"]:
        point = dict(o.split("=", 1) for o in run["overrides"])
        got[(point["experiment"].split("_")[1], float(point["stages.pretrain.mask.ratio"]))] = run["flops_paper"] / 1e18
    for i, ratio in enumerate(axis["mask_ratio"]):
        for variant in ("deferred", "maskdit"):  # within 5% of the axis
            assert got[(variant, ratio)] == pytest.approx(axis[variant][i], rel=0.05), (variant, ratio)
        assert got[("maskdit", ratio)] == pytest.approx(got[("deferred", ratio)], rel=0.05)  # MaskDiT at deferred's
        # naive: the same absolute offset from the axis as deferred (the axis is read off a plot), within 0.15 EFLOPs
        offset = got[("deferred", ratio)] - axis["deferred"][i]
        assert got[("naive", ratio)] - axis["naive"][i] == pytest.approx(offset, abs=0.15), ratio


def test_bad_overrides_and_sweep_points_are_named(capsys):
    with pytest.raises(SystemExit, match=r"microdit-plan: error: sweep point .*optim.lr=nan.*finite"):
        plan_cli.main(["-m", "optim.lr=1e-3,nan"])
    with pytest.raises(SystemExit, match=r"no config 'fig99' in group experiment"):
        plan_cli.main(["experiment=fig99"])
    with pytest.raises(SystemExit):
        plan_cli.main(["--mfu", "2"])
    baseline = ["experiment=fig7b_unmasked_equal"]
    assert cost_plan(sweep_points(baseline))["runs"][0]["problems"] == []
    (problem,) = cost_plan([baseline + ["stages.pretrain.ema.start_images=102400000"]])["runs"][0]["problems"]
    assert problem.startswith("stages.pretrain: ema.start_images=102400000 is not before the stage's end (785")
    assert problem.endswith("images): its EMA never starts")  # the baseline as it was: evaluated on raw weights
