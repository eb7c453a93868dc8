"""Uncertainty across seeds: Student-t intervals, Welch's t-test, Holm's correction, one-seed labels."""

import math

import pytest

from microdit.eval.stats import holm, significant_differences, summarize, welch_p


def test_student_t_interval_against_the_table():
    s = summarize([1.0, 2.0, 3.0])  # mean 2, sample sd 1, t(0.975, df 2) = 4.3027
    assert s.n == 3 and s.mean == 2.0 and s.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert str(s) == "2 ± 2.5 (n=3)"
    two = summarize([1.0, 3.0])  # t(0.975, df 1) = 12.706, sd sqrt(2)
    assert two.half_width == pytest.approx(12.706205 * math.sqrt(2) / math.sqrt(2), rel=1e-6)


def test_one_seed_missing_and_non_numbers():
    assert str(summarize([5.0])) == "5 (one seed)" and summarize([5.0]).half_width is None
    assert summarize([None, float("nan"), "x", True]) is None
    assert summarize([None, 4.0, float("nan"), 6.0]).n == 2
    same = summarize([0.1, 0.1, 0.1])  # no spread: mean and interval exact, not float noise
    assert (same.mean, same.half_width, str(same)) == (0.1, 0.0, "0.1 ± 0 (n=3)")


def test_welch_against_a_textbook_case_and_holm():
    assert welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.0213, abs=5e-4)  # t = -3.674, df = 4
    assert welch_p([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert welch_p([1], [4, 5, 6]) is None  # one seed: not testable
    assert welch_p([2.0, 2.0, 2.0], [3.0, 3.0, 3.0]) is None  # no spread (a deterministic quantity): no test
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []


def test_significant_pairs_are_ordered_and_corrected():
    groups = {"a": [1.0, 1.1, 0.9, 1.05], "b": [5.0, 5.2, 4.9, 5.1], "c": [5.05, 5.1, 4.95, 5.0]}
    found = {(lo, hi) for lo, hi, _ in significant_differences(groups)}
    assert found == {("a", "b"), ("a", "c")}  # b and c overlap
    assert significant_differences({"a": [1.0], "b": [9.0]}) == []  # one seed each: nothing to flag


def test_paired_contrast_against_scipy():
    from scipy import stats as sp

    from microdit.eval.stats import paired_contrast

    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 13.5}
    b = {0: 12.5, 1: 13.0, 2: 14.0, 3: 15.0, 9: 99.0}  # seed 9 has no partner: left out
    c = paired_contrast(a, b, margin=5.0)
    diffs = [2.5, 1.0, 3.0, 1.5]
    assert c.delta.n == 4 and c.delta.mean == pytest.approx(2.0)
    assert c.p == pytest.approx(sp.ttest_rel([b[k] for k in range(4)], [a[k] for k in range(4)]).pvalue)
    assert c.dz == pytest.approx(2.0 / sp.tstd(diffs))
    lower = sp.ttest_1samp(diffs, -5.0, alternative="greater").pvalue  # TOST: both one-sided tests reject
    upper = sp.ttest_1samp(diffs, 5.0, alternative="less").pvalue
    assert c.tost_p == pytest.approx(max(lower, upper)) and c.tost_p < 0.05
    assert paired_contrast(a, b, margin=0.5).tost_p > 0.05  # a 2-point difference is not within ±0.5
    assert paired_contrast({0: 1.0}, {1: 2.0}) is None and paired_contrast({0: 1.0}, {0: 2.0}).p is None


def test_contrast_table_corrects_over_its_declared_family_only():
    from microdit.eval.results import contrast_table

    rows = [{"trainer.name": arm, "after": "pretrain", "trainer.seed": s, "m": v + 0.1 * s, "k": 1.0 + s}
            for arm, v in (("A", 1.0), ("B", 2.0), ("C", 5.0)) for s in range(3)]
    rows[4]["m"] += 0.05  # B's seed 1: the differences vary
    table = contrast_table(rows, ["A vs B"], ["m", "k"], {"m": 2.0})
    assert "| A vs B | pretrain | m | 1.017 ± 0.072 (n=3) |" in table and "±2: p = 0.00014" in table
    assert "Holm over the 1 tests" in table  # k does not vary between the paired runs: no test
    assert "vs C" not in table and "C vs" not in table  # an undeclared arm is not tested
    one_seed = contrast_table([r for r in rows if r["trainer.seed"] == 0], ["A vs B"], ["m"])
    assert "| A vs B | pretrain | m | 1 (one seed) |" in one_seed and "Holm over" not in one_seed
    assert "no test: one pair of runs per contrast (one seed), and a paired test needs two." in one_seed
    constant = contrast_table(rows, ["A vs B"], ["k"])
    assert "no test: no paired difference varies." in constant
    with pytest.raises(ValueError, match="expected 'ARM vs ARM'"):
        contrast_table(rows, ["A and B"], ["m"])
