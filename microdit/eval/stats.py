"""Uncertainty of results across seeds: mean with a Student-t 95% confidence interval; which
pairwise differences within a table are significant (Welch's t-test, Holm-corrected per metric),
for exploration; and planned contrasts (:func:`paired_contrast`: a difference declared before the
runs, paired by seed, with its CI, effect size, p and an equivalence test), which a study reports.

A value from one run is reported as such ("one seed"): it has no interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

CONFIDENCE = 0.95
ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    """Mean of ``n`` values with the half-width of its ``CONFIDENCE`` interval (None when n < 2)."""

    mean: float
    half_width: float | None
    n: int

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.mean:.4g} (one seed)"
        return f"{self.mean:.4g} ± {self.half_width:.2g} (n={self.n})"


def is_number(value) -> bool:
    """True for a finite int or float (not a bool, None, NaN or text)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numbers(values) -> list[float]:
    """The finite numbers among ``values`` (missing, NaN, text and booleans dropped)."""
    return [float(v) for v in values if is_number(v)]


def summarize(values) -> Summary | None:
    """Mean ± Student-t half-width at ``CONFIDENCE`` of the numbers in ``values``; None if none."""
    xs = numbers(values)
    if not xs:
        return None
    n, mean = len(xs), sum(xs) / len(xs)
    if n == 1:
        return Summary(mean, None, 1)
    if max(xs) == min(xs):  # a quantity that does not vary (FLOPs, a constant prediction): exactly 0
        return Summary(xs[0], 0.0, n)
    from scipy import stats

    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Summary(mean, stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n), n)


def welch_p(a, b) -> float | None:
    """Two-sided p-value of Welch's t-test between two samples (None if either has n < 2 or
    both have no spread)."""
    a, b = numbers(a), numbers(b)
    if len(a) < 2 or len(b) < 2 or (max(a) == min(a) and max(b) == min(b)):
        return None  # too few runs, or values that do not vary across seeds (e.g. FLOPs): no test
    import warnings

    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # nearly identical values: no reliable p-value
        try:
            p = stats.ttest_ind(a, b, equal_var=False).pvalue
        except RuntimeWarning:
            return None
    return None if math.isnan(p) else float(p)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over the given tests), in input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def significant_differences(groups: dict[str, list], alpha: float = ALPHA) -> list[tuple[str, str, float]]:
    """(lower group, higher group, Holm-adjusted p) for every pair of groups whose means differ at
    level ``alpha`` (Welch's t-test over their values; pairs with n < 2 are not tested)."""
    pairs = [(a, b, welch_p(groups[a], groups[b])) for a, b in combinations(groups, 2)]
    pairs = [(a, b, p) for a, b, p in pairs if p is not None]
    out = []
    for (a, b, _), p in zip(pairs, holm([p for _, _, p in pairs]), strict=True):
        if p < alpha:
            lo, hi = (a, b) if summarize(groups[a]).mean < summarize(groups[b]).mean else (b, a)
            out.append((lo, hi, p))
    return out


@dataclass(frozen=True)
class PairedContrast:
    """A planned contrast of one metric between arms ``a`` and ``b``: the per-seed differences
    b − a (runs paired by seed: same prompts, same evaluation noise), their mean with its
    ``CONFIDENCE`` interval (``delta``), the effect size ``dz`` (mean / sd of the differences),
    the two-sided paired-t ``p`` and, with an equivalence ``margin``, the TOST p-value
    (``tost_p`` < alpha: the difference lies within ± margin)."""

    delta: Summary
    dz: float | None
    p: float | None
    margin: float | None
    tost_p: float | None


def paired_contrast(a: dict, b: dict, margin: float | None = None) -> PairedContrast | None:
    """The contrast b − a over the keys (seeds) present in both with numbers; None without any."""
    diffs = [float(b[k]) - float(a[k]) for k in a if k in b and is_number(a[k]) and is_number(b[k])]
    if not diffs:
        return None
    delta = summarize(diffs)
    n = len(diffs)
    if n < 2:
        return PairedContrast(delta, None, None, margin, None)
    sd = math.sqrt(sum((d - delta.mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        return PairedContrast(delta, None, None, margin, None)
    from scipy import stats

    se = sd / math.sqrt(n)
    p = float(2 * stats.t.sf(abs(delta.mean) / se, n - 1))
    tost = None
    if margin is not None:  # Schuirmann's two one-sided tests against -margin and +margin
        tost = float(max(stats.t.sf((delta.mean + margin) / se, n - 1), stats.t.cdf((delta.mean - margin) / se, n - 1)))
    return PairedContrast(delta, delta.mean / sd, p, margin, tost)
