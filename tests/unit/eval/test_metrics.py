"""The metric registry: names, directions and quality columns come from it."""

import pytest

from microdit.eval.metrics import (
    HIGHER,
    LOWER,
    METRICS,
    Metric,
    check_names,
    direction,
    quality_columns,
    register,
)


def test_registry_names_and_directions():
    assert {"probe", "fid", "clip_fid", "clip_score"} <= set(METRICS)
    assert direction("eval.heldout.fid") == LOWER and direction("eval.coco.clip_score") == HIGHER
    assert direction("eval.heldout.probe_acc.colour") == HIGHER and direction("eval.heldout.probe_fd") == LOWER
    assert direction("trainer.seed") is None
    with pytest.raises(ValueError, match="already registered"):
        register(METRICS["fid"])
    with pytest.raises(ValueError, match="direction"):
        register(Metric("bad", "", "probe", lambda inputs: {}, {"bad": "up"}))
    with pytest.raises(ValueError, match=r"--metrics: unknown metric\(s\) \['nope'\]"):
        check_names(["probe", "nope"], where="--metrics: ")


def test_quality_columns_prefer_pixel_metrics():
    offline = [{"eval.heldout.probe_fd": 1.0, "eval.heldout.probe_acc_mean": 0.5, "eval.heldout.probe_acc.shape": 0.2}]
    assert quality_columns(offline) == ["eval.heldout.probe_acc_mean", "eval.heldout.probe_fd"]
    pixel = [offline[0] | {"eval.coco.fid": 9.0, "eval.coco.clip_score": 25.0}]
    assert quality_columns(pixel) == ["eval.coco.clip_score", "eval.coco.fid"]
    assert quality_columns([{"trainer.seed": 0}]) == []
