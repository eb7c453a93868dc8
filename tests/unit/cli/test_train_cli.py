"""microdit-train's sweep expansion: the points ``cli`` validates before a ``-m`` sweep starts are
the runs Hydra's basic sweeper launches."""

import itertools
import math

import pytest
from hydra import compose, initialize_config_dir

from microdit.experiment import CONF_DIR, compose_config, sweep_points


def as_dicts(points: list[list[str]]) -> list[dict[str, str]]:
    return [dict(o.split("=", 1) for o in point) for point in points]


def experiment_params(name: str) -> dict[str, list[str]]:
    """The sweep an experiment file declares, read from its composed hydra config."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        params = compose("train", overrides=[f"experiment={name}"], return_hydra_config=True).hydra.sweeper.params
    return {key: str(value).split(",") for key, value in params.items()}


def test_a_single_run_is_one_point():
    overrides = ["trainer.name=x", "stages.pretrain.mask.ratio=0.5"]
    assert as_dicts(sweep_points(overrides)) == [dict(o.split("=", 1) for o in overrides)]


def test_command_line_sweeps_are_crossed():
    points = as_dicts(sweep_points(["stages.pretrain.mask.ratio=0.25,0.5,0.75", "trainer.seed=0,1", "trainer.name=x"]))
    want = [{"stages.pretrain.mask.ratio": r, "trainer.seed": s, "trainer.name": "x"}
            for r, s in itertools.product(["0.25", "0.5", "0.75"], ["0", "1"])]
    assert sorted(points, key=str) == sorted(want, key=str)


def test_an_experiments_own_sweep_is_expanded_and_the_command_line_wins():
    params = experiment_params("fig4_mask_ratio_cpu")
    assert len(params) >= 2
    pinned, value = next(iter(params)), "0.123"
    points = as_dicts(sweep_points(["experiment=fig4_mask_ratio_cpu", f"{pinned}={value}"]))
    assert all(p[pinned] == value and p["experiment"] == "fig4_mask_ratio_cpu" for p in points)
    others = {k: v for k, v in params.items() if k != pinned}
    assert len(points) == math.prod(len(v) for v in others.values())
    assert {tuple(p[k] for k in others) for p in points} == set(itertools.product(*others.values()))


def test_an_experiment_of_ones_own_outside_the_package(tmp_path, monkeypatch):
    """The README's way to add an ablation to an installed package: a conf/experiment/ of one's own,
    found through Hydra's search path (a relative file:// path reads from the working folder);
    its sweep is expanded like a built-in experiment's, and without the search path it is not found."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /protocol: cpu_ablation\n"
        "model: {overrides: {mixer_depth: 1}}\n"
        "hydra: {sweeper: {params: {stages.pretrain.mask.ratio: '0.5,0.75'}}}\n")
    monkeypatch.chdir(tmp_path)
    overrides = ["experiment=mine", "hydra.searchpath=[file://conf]"]
    cfg = compose_config(overrides)
    assert cfg.model.overrides.mixer_depth == 1 and cfg.trainer.run_dir == "runs/cpu"
    points = as_dicts(sweep_points(overrides))
    assert sorted(p["stages.pretrain.mask.ratio"] for p in points) == ["0.5", "0.75"]
    with pytest.raises(ValueError) as refused:
        compose_config(["experiment=mine"])
    assert str(refused.value).endswith("one of your own: keep it as conf/experiment/mine.yaml and add the override "
                                       "'hydra.searchpath=[file://conf]'")
    assert "Config search path" not in str(refused.value) and "fig6_naive " in str(refused.value)
