"""Fréchet distance against the closed form for Gaussians; feature statistics save / load."""

import numpy as np
import pytest
import torch

from microdit.eval import FeatureStats, frechet_distance


def test_frechet_of_gaussians_against_the_closed_form():
    rng = np.random.default_rng(0)
    a = np.diag(rng.uniform(0.5, 2, 6))
    b = np.diag(rng.uniform(0.5, 2, 6))
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(np.diag(a)) - np.sqrt(np.diag(b))) ** 2)  # commuting case
    assert frechet_distance(FeatureStats(mu1, a, 10), FeatureStats(mu2, b, 10)) == pytest.approx(closed, rel=1e-10)
    import scipy.linalg

    m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(6), m2 @ m2.T + 0.1 * np.eye(6)  # non-commuting
    oracle = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(FeatureStats(mu1, s1, 10), FeatureStats(mu2, s2, 10)) == pytest.approx(oracle, rel=1e-8)


def test_a_set_against_itself_and_save_load(tmp_path):
    x = torch.randn(500, 16)
    stats = FeatureStats.of(x)
    assert abs(frechet_distance(stats, FeatureStats.of(x))) < 1e-8
    stats.save(tmp_path / "s.npz")
    loaded = FeatureStats.load(tmp_path / "s.npz")
    assert np.array_equal(loaded.sigma, stats.sigma) and loaded.count == 500
    assert frechet_distance(stats, FeatureStats.of(torch.randn(500, 16) + 1)) > 10
    with pytest.raises(ValueError, match="N >= 2"):
        FeatureStats.of(torch.randn(1, 4))

