"""benchmarks/welch_from_summary.py: Welch intervals from summaries, and the committed welch.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, load_script
from scipy import stats

welch = load_script(ROOT / "benchmarks" / "welch_from_summary.py", "welch_from_summary")


def test_welch_ci_equals_scipy_on_the_raw_samples() -> None:
    a = np.array([0.61, 0.64, 0.66, 0.63])
    b = np.array([0.60, 0.58, 0.63])
    w = welch.welch_ci(a.mean(), a.std(ddof=1), len(a), b.mean(), b.std(ddof=1), len(b))
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert w.mean_diff == pytest.approx(a.mean() - b.mean())
    assert (w.ci_low, w.ci_high) == pytest.approx((ref.low, ref.high))


def test_welch_ci_by_hand() -> None:
    # equal stds and n: se = sqrt(2 * 1^2 / 3) = 0.8165, df = 4, t(0.975, 4) = 2.7764
    w = welch.welch_ci(2.0, 1.0, 3, 0.0, 1.0, 3)
    assert w.df == pytest.approx(4.0)
    assert w.ci_low == pytest.approx(2.0 - 2.776445 * math.sqrt(2 / 3), abs=1e-5)
    assert w.ci_high == pytest.approx(2.0 + 2.776445 * math.sqrt(2 / 3), abs=1e-5)


def test_welch_ci_degenerate_and_invalid() -> None:
    w = welch.welch_ci(0.5, 0.0, 3, 0.25, 0.0, 3)
    assert (w.ci_low, w.ci_high) == (0.25, 0.25) and math.isnan(w.df)
    with pytest.raises(ValueError, match="at least 2 values"):
        welch.welch_ci(0.5, 0.1, 1, 0.4, 0.1, 3)
    with pytest.raises(ValueError, match=">= 0"):
        welch.welch_ci(0.5, -0.1, 3, 0.4, 0.1, 3)


@pytest.mark.parametrize(
    ("low", "high", "n_a", "n_b", "expected"),
    [
        (0.1, 2.0, 3, 3, "better"),
        (-2.0, -0.1, 3, 5, "worse"),
        (-0.1, 2.0, 3, 3, "no detectable difference"),
        (0.1, 2.0, 2, 3, "too few seeds"),
        (-2.0, -0.1, 3, 2, "too few seeds"),
    ],
)
def test_verdict(low: float, high: float, n_a: int, n_b: int, expected: str) -> None:
    assert welch.verdict(low, high, n_a, n_b) == expected


def test_welch_rows_from_a_summary(tmp_path: Path) -> None:
    (tmp_path / "summary.csv").write_text(
        "variant,seeds,global_acc_mean,global_acc_std\nref,3,0.70,0.01\nnew,3,0.75,0.01\nfew,2,0.80,0.01\n"
    )
    (tmp_path / "reference.csv").write_text("variant,reference\nref,ref\nnew,ref\nfew,ref\n")
    rows = welch.welch_rows(tmp_path, "fake")
    assert [(r["variant"], r["verdict"]) for r in rows] == [
        ("new", "better"),
        ("few", "too few seeds"),
    ]
    assert float(rows[0]["mean_diff"]) == pytest.approx(5.0)  # points
    (tmp_path / "reference.csv").write_text("variant,reference\nghost,ref\n")
    with pytest.raises(ValueError, match="no variant 'ghost'"):
        welch.welch_rows(tmp_path, "fake")


@pytest.mark.parametrize("name", welch.BENCHMARKS)
def test_committed_welch_csv_is_what_the_script_writes(name: str) -> None:
    report = welch.report_dir_of(name)
    with (report / "welch.csv").open(newline="") as f:
        committed = list(csv.DictReader(f))
    assert committed == welch.welch_rows(report, name), (
        f"{report.relative_to(ROOT)}/welch.csv is stale: run "
        f".venv/bin/python benchmarks/welch_from_summary.py {name}"
    )
