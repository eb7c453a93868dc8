"""The metric registry: names, directions and quality columns come from it; KID against
torch-fidelity's implementation as the oracle."""

import numpy as np
import pytest
import torch

from microdit.eval.frechet import kernel_inception_distance
from microdit.eval.metrics import (
    HIGHER,
    LOWER,
    METRICS,
    EvalInputs,
    Metric,
    check_names,
    direction,
    metric_columns,
    quality_columns,
    register,
)


def test_registry_names_and_directions():
    assert {"probe", "fid", "clip_fid", "clip_score", "kid"} <= set(METRICS)
    assert direction("eval.heldout.fid") == LOWER and direction("eval.coco.clip_score") == HIGHER
    assert direction("eval.heldout.probe_acc.colour") == HIGHER and direction("eval.heldout.probe_fd") == LOWER
    assert direction("eval.heldout.kid") == LOWER and direction("trainer.seed") is None
    with pytest.raises(ValueError, match="already registered"):
        register(METRICS["fid"])
    with pytest.raises(ValueError, match="direction"):
        register(Metric("bad", "", "probe", lambda inputs: {}, {"bad": "up"}))
    with pytest.raises(ValueError, match=r"--metrics: unknown metric\(s\) \['nope'\]"):
        check_names(["probe", "nope"], where="--metrics: ")
    with pytest.raises(ValueError, match=r"^eval.metrics: no metric given; choose from probe,"):
        check_names([], where="eval.metrics: ")


def test_the_probe_declares_the_columns_an_evaluation_writes():
    """The columns a real job evaluation wrote (the committed main-job results) are the probe's
    declared outputs, each a column or a column per attribute; the other metrics write their name."""
    from conftest import FIXTURE_DIR

    header = (FIXTURE_DIR / "main_job.csv").read_text().splitlines()[0].split(",")
    written = {c.removeprefix("eval.heldout.").split(".")[0] for c in header if c.startswith("eval.heldout.")}
    assert set(metric_columns(["probe"])) == written and len(metric_columns(["probe"])) == len(written)
    assert metric_columns(["fid", "kid", "clip_score", "clip_fid"]) == ["fid", "kid", "clip_score", "clip_fid"]


def test_quality_columns_prefer_pixel_metrics():
    offline = [{"eval.heldout.probe_fd": 1.0, "eval.heldout.probe_acc_mean": 0.5, "eval.heldout.probe_acc.shape": 0.2}]
    assert quality_columns(offline) == ["eval.heldout.probe_acc_mean", "eval.heldout.probe_fd"]
    pixel = [offline[0] | {"eval.coco.fid": 9.0, "eval.coco.kid": 0.01, "eval.coco.kid_std": 0.001}]
    assert quality_columns(pixel) == ["eval.coco.fid", "eval.coco.kid"]
    assert quality_columns([{"trainer.seed": 0}]) == []


def test_kid_matches_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 16)), rng.normal(0.3, 1.2, size=(50, 16))
    # one subset holding every sample of equal-sized sets: no subsampling, the two estimates coincide
    ours, _ = kernel_inception_distance(a[:50], b, subsets=1, subset_size=50)
    oracle = kid_features_to_metric(torch.from_numpy(a[:50]), torch.from_numpy(b), kid_subsets=1,
                                    kid_subset_size=50, verbose=False)["kernel_inception_distance_mean"]
    assert ours == pytest.approx(oracle, rel=1e-9)


def test_kid_is_unbiased_and_separates():
    rng = np.random.default_rng(1)
    same = [kernel_inception_distance(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)), subsets=5)[0]
            for _ in range(200)]
    shifted = kernel_inception_distance(rng.normal(size=(40, 8)), rng.normal(0.5, 1, size=(40, 8)), subsets=5)[0]
    sem = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * sem  # mean zero for one distribution, even at 40 samples
    assert shifted > max(same)
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(np.zeros((1, 4)), np.zeros((5, 4)))


class Stub:
    """A stand-in feature network: the mean and std of each channel."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def test_kid_metric_reads_each_feature_set_once(monkeypatch):
    calls = []
    monkeypatch.setitem(__import__("microdit.eval.metrics", fromlist=["EXTRACTORS"]).EXTRACTORS, "inception",
                        lambda settings, device: calls.append("built") or Stub())
    g = torch.Generator().manual_seed(0)
    generated, reference = (torch.rand(30, 3, 8, 8, generator=g) * 2 - 1 for _ in range(2))  # pixel-space latents
    inputs = EvalInputs(generated, reference, [], [], "unused", "unused", "pixel", settings=None)
    first = METRICS["kid"].compute(inputs)
    assert set(first) == {"kid", "kid_std"} and METRICS["kid"].compute(inputs) == first
    assert calls == ["built"]  # one network, its features computed once per set
