"""FLOP budgets: how one is written (budget_tag), the trend of a paired gap with compute, and where it would cross zero.

A crossover study (``conf/job/crossover.yaml``) trains arms A and B at several FLOP budgets, the
same seeds in both arms of a budget. At each budget every seed gives one paired difference
``d = B − A`` of a metric (same evaluation noise and prompts in both arms). :func:`gap_trend` fits

    d = α + β · log10(budget) + ε,    ε ~ N(0, σ²)  independent across runs,

by ordinary least squares over every paired difference (not over the per-budget means, so a budget
with 5 seeds weighs 5/3 of one with 3), with σ² pooled from the residuals (n − 2 degrees of
freedom). The budget at which the fitted gap is zero, ``x0 = −α / β`` (in log10 FLOPs), gets its
``CONFIDENCE`` interval from Fieller's theorem: the set of x where the fitted gap's t-statistic
``|α + β x| / se(α + β x)`` stays below the t quantile. That set is a bounded interval only where
the slope is itself distinguishable from 0; otherwise it is unbounded (the two rays outside a
pair of roots, or every budget), and the report says so instead of inventing an interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from microdit.eval.stats import CONFIDENCE, is_number


def budget_tag(flops: float) -> str:
    """A FLOP budget written short, as in run names and table heads: 5e11, 1.2e13."""
    exponent = math.floor(math.log10(flops) + 1e-9)
    return f"{round(flops / 10**exponent, 3):g}e{exponent}"


@dataclass(frozen=True)
class GapTrend:
    """The fitted line of the gap against log10(FLOPs), with standard errors, and the crossing."""

    n: int  # paired differences used
    budgets: int  # distinct budgets
    intercept: float  # α: the gap at 1 FLOP (log10 = 0), seldom meaningful alone
    slope: float  # β: change of the gap per 10x compute
    slope_ci: tuple[float, float]
    slope_p: float  # two-sided t-test of β = 0
    cross_log10: float | None  # x0 = −α/β; None where β == 0
    cross_interval: tuple[float, float] | None  # bounded Fieller interval of x0, else None
    cross_kind: str  # "bounded", "outside" (two rays: x0 is not bounded away from ±inf) or "unbounded"

    def gap_at(self, log10_flops: float) -> float:
        return self.intercept + self.slope * log10_flops


def paired_gaps(rows: list[dict], a: str, b: str, metric: str, budget: str = "budget", arm: str = "arm",
                pair: str = "trainer.seed") -> list[tuple[float, float]]:
    """(log10 budget, B − A) of every seed that has the metric in both arms at a budget."""
    out = []
    for value in sorted({r[budget] for r in rows if r.get(arm) in (a, b)}):
        side = {name: {r[pair]: r.get(metric) for r in rows if r.get(arm) == name and r[budget] == value}
                for name in (a, b)}
        for seed, va in side[a].items():
            vb = side[b].get(seed)
            if is_number(va) and is_number(vb):
                out.append((math.log10(float(value)), float(vb) - float(va)))
    return out


def _fieller(alpha: float, beta: float, var_a: float, var_b: float, cov: float, t: float):
    """Fieller's set {x : (α + βx)² <= t² (Var α + 2x Cov + x² Var β)}: (kind, interval)."""
    qa = beta**2 - t**2 * var_b
    qb = 2 * (alpha * beta - t**2 * cov)
    qc = alpha**2 - t**2 * var_a
    disc = qb**2 - 4 * qa * qc
    if qa > 0 and disc >= 0:  # the slope is significant: a bounded interval
        root = math.sqrt(disc)
        return "bounded", ((-qb - root) / (2 * qa), (-qb + root) / (2 * qa))
    if qa < 0 and disc > 0:
        return "outside", None
    return "unbounded", None


def gap_trend(points: list[tuple[float, float]]) -> GapTrend | None:
    """The least-squares line through ``points`` ((log10 FLOPs, gap) pairs) and its zero crossing;
    None with fewer than 3 points or fewer than 2 distinct budgets (no residual variance)."""
    from scipy import stats

    n = len(points)
    xs = [x for x, _ in points]
    if n < 3 or len(set(xs)) < 2:
        return None
    mx = sum(xs) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    beta = sum((x - mx) * (y - my) for x, y in points) / sxx
    alpha = my - beta * mx
    sigma2 = sum((y - alpha - beta * x) ** 2 for x, y in points) / (n - 2)
    var_b = sigma2 / sxx
    var_a = sigma2 * (1 / n + mx**2 / sxx)
    cov = -mx * sigma2 / sxx
    t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 2))
    se_b = math.sqrt(var_b)
    p = float(2 * stats.t.sf(abs(beta) / se_b, n - 2)) if se_b > 0 else 0.0
    kind, interval = _fieller(alpha, beta, var_a, var_b, cov, t)
    return GapTrend(n, len(set(xs)), alpha, beta, (beta - t * se_b, beta + t * se_b), p,
                    None if beta == 0 else -alpha / beta, interval, kind)


def describe(trend: GapTrend, low: float, high: float) -> str:
    """One sentence on the crossing, against the studied range [low, high] of log10 FLOPs (budgets
    written as in run names: :func:`budget_tag`)."""

    def at(log10_flops: float) -> str:
        return budget_tag(10**log10_flops)

    where = f"{at(trend.cross_log10)} FLOPs" if trend.cross_log10 is not None else "nowhere (flat fit)"
    if trend.cross_kind == "bounded":
        lo, hi = trend.cross_interval
        inside = "inside" if low <= trend.cross_log10 <= high else "outside"
        return (f"the fitted gap crosses zero at {where} ({inside} the studied {at(low)}–{at(high)}), "
                f"{CONFIDENCE:.0%} interval {at(lo)}–{at(hi)}")
    return (f"the fitted gap would cross zero at {where}, but its slope is not distinguishable from 0 "
            f"(p = {trend.slope_p:.2g}): no bounded crossing budget at {CONFIDENCE:.0%}")
