"""The gap trend of a crossover study: least squares over paired differences, checked against
numpy's fit, and Fieller's crossing interval checked point by point against its definition."""

import math

import numpy as np
import pytest
from scipy import stats

from microdit.eval.trend import budget_tag, describe, gap_trend, paired_gaps


def _points(slope, intercept, noise, xs=(11.7, 12.0, 12.3, 12.7), seeds=(3, 3, 3, 5), seed=0):
    rng = np.random.default_rng(seed)
    return [(x, intercept + slope * x + noise * rng.standard_normal()) for x, n in zip(xs, seeds, strict=True)
            for _ in range(n)]


def test_the_fit_is_numpys_least_squares_line():
    points = _points(-0.1, 1.25, 0.02)
    fit = gap_trend(points)
    x, y = np.array(points).T
    (slope, intercept), cov = np.polyfit(x, y, 1, cov="unscaled")
    residual = ((y - intercept - slope * x) ** 2).sum() / (len(x) - 2)
    assert fit.slope == pytest.approx(slope, rel=1e-9) and fit.intercept == pytest.approx(intercept, rel=1e-9)
    t = stats.t.ppf(0.975, len(x) - 2)
    half = t * math.sqrt(cov[0, 0] * residual)
    assert fit.slope_ci == pytest.approx((slope - half, slope + half), rel=1e-9)
    assert fit.n == 14 and fit.budgets == 4


def test_fiellers_interval_is_where_the_fitted_gap_is_not_distinguishable_from_zero():
    points = _points(-0.1, 1.25, 0.02)  # crosses zero at 10^12.5
    fit = gap_trend(points)
    assert fit.cross_kind == "bounded" and fit.cross_log10 == pytest.approx(12.5, abs=0.1)
    x, y = np.array(points).T
    design = np.stack([np.ones_like(x), x], 1)
    residual = ((y - fit.intercept - fit.slope * x) ** 2).sum() / (len(x) - 2)
    cov = np.linalg.inv(design.T @ design) * residual
    t = stats.t.ppf(0.975, len(x) - 2)

    def t_stat(at):  # the fitted gap at log10 FLOPs `at` over its standard error
        v = np.array([1.0, at])
        return abs(fit.gap_at(at)) / math.sqrt(v @ cov @ v)

    lo, hi = fit.cross_interval
    assert lo < fit.cross_log10 < hi
    assert t_stat(lo) == pytest.approx(t, rel=1e-6) and t_stat(hi) == pytest.approx(t, rel=1e-6)
    for at in np.linspace(lo - 1, hi + 1, 41):
        assert (t_stat(at) <= t) == (lo <= at <= hi)
    text = describe(fit, 11.7, 12.7)
    assert f"crosses zero at {budget_tag(10**fit.cross_log10)} FLOPs" in text and "inside" in text
    assert f"{budget_tag(10**lo)}–{budget_tag(10**hi)}" in text


def test_a_flat_gap_has_no_bounded_crossing():
    fit = gap_trend(_points(0.0, 0.05, 0.05, seed=3))
    assert fit.cross_interval is None and fit.cross_kind in ("outside", "unbounded")
    assert fit.slope_ci[0] < 0 < fit.slope_ci[1]
    assert "not distinguishable from 0" in describe(fit, 11.7, 12.7)


def test_too_few_points_or_one_budget_give_no_fit():
    assert gap_trend([(12.0, 0.1), (12.0, 0.2), (12.0, 0.3)]) is None
    assert gap_trend([(12.0, 0.1), (13.0, 0.2)]) is None


def test_paired_gaps_pair_by_seed_within_each_budget():
    rows = [{"arm": "a", "budget": 1e12, "trainer.seed": 0, "m": 0.5},
            {"arm": "b", "budget": 1e12, "trainer.seed": 0, "m": 0.2},
            {"arm": "a", "budget": 1e12, "trainer.seed": 1, "m": 0.4},  # no b for seed 1
            {"arm": "b", "budget": 1e13, "trainer.seed": 1, "m": 0.9},
            {"arm": "a", "budget": 1e13, "trainer.seed": 1, "m": None},  # not evaluated
            {"arm": "a", "budget": 1e13, "trainer.seed": 2, "m": 0.3},
            {"arm": "b", "budget": 1e13, "trainer.seed": 2, "m": 0.6}]
    assert paired_gaps(rows, "a", "b", "m") == [(12.0, pytest.approx(-0.3)), (13.0, pytest.approx(0.3))]
