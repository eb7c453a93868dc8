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
