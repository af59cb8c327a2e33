"""Golden numbers for the report's paired statistics (fedpers.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from fedpers import stats


def test_paired_t_by_hand():
    # d = 1, 2, 3: mean 2, s = 1, n = 3, t_{0.975, 2} = 4.302653; half = 4.302653 / sqrt 3
    t = stats.paired_t([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert (t.n, t.mean) == (3, 2.0)
    assert t.ci_low == pytest.approx(2.0 - half, rel=1e-12)
    assert t.ci_high == pytest.approx(2.0 + half, rel=1e-12)
    # t statistic = 2 / (1 / sqrt 3) = 3.4641, two-sided with 2 df
    assert t.p == pytest.approx(2 * sps.t.sf(2 * math.sqrt(3), 2), rel=1e-12)
    assert t.p == pytest.approx(sps.ttest_rel([3.0, 4.0, 5.0], [2.0, 2.0, 2.0]).pvalue)


def test_paired_t_edge_cases():
    one = stats.paired_t([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.ci_low) and math.isnan(one.p)
    assert stats.paired_t([]).n == 0
    same = stats.paired_t([0.25, 0.25, 0.25])  # no spread: the interval is the point
    assert (same.ci_low, same.ci_high, same.p) == (0.25, 0.25, 0.0)
    zero = stats.paired_t([0.0, 0.0, 0.0])
    assert (zero.ci_low, zero.ci_high, zero.p) == (0.0, 0.0, 1.0)


def test_wilcoxon_matches_scipy_and_handles_all_zero():
    d = [0.3, -0.1, 0.25, 0.4, 0.05, 0.2, -0.02]
    # exact distribution, 7 pairs, no ties: |d| ranks 0.02 -> 1 and 0.1 -> 3 are the
    # negative ones, W- = 4; subsets of {1..7} summing to <= 4: {}, 1, 2, 3, 4, 1+2, 1+3
    # -> p = 2 * 7 / 2^7
    assert stats.wilcoxon_p(d) == pytest.approx(14 / 128)
    assert stats.wilcoxon_p(d) == sps.wilcoxon(d).pvalue
    assert stats.wilcoxon_p([0.0, 0.0]) == 1.0
    assert math.isnan(stats.wilcoxon_p([]))


def test_holm_golden():
    # m = 3 finite: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> running max 0.06
    got = stats.holm([0.04, 0.01, math.nan, 0.03])
    assert got[:2] == pytest.approx([0.06, 0.03]) and got[3] == pytest.approx(0.06)
    assert math.isnan(got[2])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == []


def test_verdict_directions():
    assert stats.verdict(3, 0.01, 0.2) == "better"
    assert stats.verdict(3, -0.2, -0.01) == "worse"
    assert stats.verdict(3, -0.2, 0.01) == "no detectable difference"
    # lower is better (bytes): an interval below 0 is an improvement
    assert stats.verdict(5, -2e6, -1e6, higher_is_better=False) == "better"
    assert stats.verdict(5, 1e6, 2e6, higher_is_better=False) == "worse"
    assert stats.verdict(2, 0.1, 0.2) == "too few seeds"
    assert stats.verdict(4, math.nan, math.nan) == "too few seeds"


def test_interval_covers_at_the_stated_rate():
    """The 95% interval covers the true mean difference about 95% of the time."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        t = stats.paired_t(rng.normal(0.3, 1.0, size=4))
        hits += t.ci_low <= 0.3 <= t.ci_high
    assert 0.91 < hits / 400 < 0.99  # +-3.6 standard errors of a 95% rate
