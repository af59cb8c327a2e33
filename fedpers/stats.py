"""Paired statistics for benchmark reports: t interval and test over seeds, Wilcoxon
signed-rank over clients, Holm's step-down correction, and the verdict.

Every function takes plain differences (variant minus reference) and returns plain
floats; NaN stands for "not computable" (too few pairs), never for zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Verdicts of :func:`verdict` (a contract: ``comparison.csv`` holds these strings).
BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no detectable difference"
TOO_FEW_SEEDS = "too few seeds"
MIN_SEEDS = 3  # fewer paired seeds than this: no verdict


@dataclass(frozen=True)
class PairedT:
    """Mean of paired differences, its 95% Student-t interval and the paired t-test."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p: float


def paired_t(diffs: Sequence[float], level: float = 0.95) -> PairedT:
    """Student-t interval and two-sided one-sample t-test of the paired differences.

    ``mean ± t_{(1+level)/2, n-1} · s / sqrt(n)`` with ``s`` the sample standard
    deviation (ddof=1); the p-value is ``scipy.stats.ttest_rel``'s, which equals the
    one-sample t-test of the differences against 0. Identical differences give a
    zero-width interval; all-zero differences give p = 1.

    Parameters
    ----------
    diffs
        One difference per paired seed.
    level
        Coverage of the interval.

    Returns
    -------
    PairedT
        NaN interval and p-value for fewer than 2 differences (mean NaN for none).
    """
    d = np.asarray(diffs, dtype=np.float64)
    n = int(d.size)
    if n == 0:
        return PairedT(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(d.mean())
    if n < 2:
        return PairedT(n, mean, math.nan, math.nan, math.nan)
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf((1.0 + level) / 2.0, n - 1)) * sd / math.sqrt(n)
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return PairedT(n, mean, mean - half, mean + half, p)


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences.

    ``scipy.stats.wilcoxon`` with its defaults (zero differences dropped, exact
    distribution for small samples without ties, normal approximation otherwise).

    Returns
    -------
    float
        NaN for no differences; 1.0 when every difference is zero.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return math.nan
    if not np.any(d != 0.0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(stats.wilcoxon(d).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaNs stay NaN and do
    not count in the family.

    With the m finite p-values sorted ascending, ``p_(i)`` gets
    ``max_{j <= i} min(1, (m - j + 1) p_(j))`` (1-based).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = running
    return [float(x) for x in out]


def verdict(n: int, ci_low: float, ci_high: float, higher_is_better: bool = True) -> str:
    """``better``/``worse`` when the interval excludes 0 (in the metric's good
    direction), ``no detectable difference`` when it covers 0, ``too few seeds``
    under :data:`MIN_SEEDS` paired seeds."""
    if n < MIN_SEEDS or math.isnan(ci_low) or math.isnan(ci_high):
        return TOO_FEW_SEEDS
    if ci_low > 0.0:
        return BETTER if higher_is_better else WORSE
    if ci_high < 0.0:
        return WORSE if higher_is_better else BETTER
    return NO_DIFFERENCE
