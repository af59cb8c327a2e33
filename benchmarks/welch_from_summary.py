"""Unpaired Welch 95% confidence intervals of variant differences, from ``summary.csv``.

For the benchmarks whose per-seed results were never committed, the only record of a
sweep is ``report/summary.csv``: per variant, the mean, the sample standard deviation
and the number of seeds of each metric. A paired interval (same seed, two variants)
needs the per-seed values; what can be recomputed from the summary is the unpaired
Welch interval of the difference of two means (Welch 1947)::

    d  = mean_a - mean_b
    se = sqrt(s_a^2 / n_a + s_b^2 / n_b)
    df = se^4 / ((s_a^2 / n_a)^2 / (n_a - 1) + (s_b^2 / n_b)^2 / (n_b - 1))
    CI = d -+ t_{0.975, df} * se

Seeds that draw the same data and clients for every variant make the two variants'
results positively correlated, which a paired interval would exploit; ignoring it makes
the Welch interval wider (conservative), never narrower.

Each benchmark's ``report/welch.csv`` holds one row per comparison its README states:
``variant, reference, metric, unit, mean_diff, ci_low, ci_high, df, n_a, n_b, verdict``
with the difference and the interval in accuracy points (100 x the fraction). The
verdict is ``better`` when the whole interval is above 0, ``worse`` when it is below 0,
``no detectable difference`` otherwise, and ``too few seeds`` when either side has fewer
than 3 seeds (the interval is still written; with 2 seeds it is very wide).

Run from the repository root::

    .venv/bin/python benchmarks/welch_from_summary.py            # every benchmark below
    .venv/bin/python benchmarks/welch_from_summary.py selection  # one
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from pathlib import Path
from typing import NamedTuple

from scipy import stats

from fedpers.stats import verdict as paired_verdict

logger = logging.getLogger(__name__)

BENCHMARKS_DIR = Path(__file__).resolve().parent

#: metric name in welch.csv -> (mean column, std column) of summary.csv
METRIC_COLUMNS: dict[str, tuple[str, str]] = {
    "global_acc": ("global_acc_mean", "global_acc_std"),
    "client_acc_mean": ("client_acc_mean", "client_acc_mean_std"),
    "client_acc_p10": ("client_acc_p10", "client_acc_p10_std"),
}

CONFIDENCE = 0.95

_PERSONALIZATION_SETTINGS = ("a0.1", "a0.5", "a5.0", "patho2", "shakespeare")
_PERSONALIZATION_METHODS = ("local", "finetune", "fedper", "fedrep", "ditto", "ditto-l1", "apfl")
_FEDBN_SETTINGS = ("a0.1", "a0.5", "a5.0", "patho2", "shift")
_DITTO_L1_SETTINGS = ("a0.1", "a5.0")  # Ditto with lambda 1.0 ran only there

#: Comparisons beyond reference.csv's rows: benchmark -> (variant, reference, metric).
EXTRA_COMPARISONS: dict[str, list[tuple[str, str, str]]] = {
    "communication": [
        ("fedper-topk-ef", "fedper", "client_acc_mean"),
        ("fedper-topk-ef", "fedper", "client_acc_p10"),
        ("qsgd-ef", "qsgd", "global_acc"),
        ("sign-ef", "sign", "global_acc"),
        ("topk-ef", "topk", "global_acc"),
        ("randk-ef", "randk", "global_acc"),
    ],
    "personalization": [
        (f"{method}-{setting}", f"none-{setting}", "client_acc_mean")
        for setting in _PERSONALIZATION_SETTINGS
        for method in _PERSONALIZATION_METHODS
        if method != "ditto-l1" or setting in _DITTO_L1_SETTINGS
    ]
    + [
        (f"fedbn-{setting}", f"none-bn-{setting}", "client_acc_mean") for setting in _FEDBN_SETTINGS
    ],
    "robustness": [
        ("median-clean", "mean-clean", "global_acc"),
        ("trimmed-mean-clean", "mean-clean", "global_acc"),
        ("krum-clean", "mean-clean", "global_acc"),
        ("multi-krum-clean", "mean-clean", "global_acc"),
        ("multi-krum-sign-flip-20", "mean-clean", "global_acc"),
    ],
    "selection": [
        ("fedprox-uniform", "fedavg-uniform", "global_acc"),
    ],
}

#: Benchmarks this script writes welch.csv for (those not rerun with per-seed results).
BENCHMARKS = (
    "communication",
    "heterogeneity",
    "personalization",
    "robustness",
    "selection",
    "sparsification",
)

FIELDS = (
    "variant",
    "reference",
    "metric",
    "unit",
    "mean_diff",
    "ci_low",
    "ci_high",
    "df",
    "n_a",
    "n_b",
    "verdict",
)


class Welch(NamedTuple):
    """Welch interval of ``mean_a - mean_b``, in the units of the inputs.

    Attributes
    ----------
    mean_diff, ci_low, ci_high : float
        The difference of the means and its two-sided interval.
    df : float
        Welch-Satterthwaite degrees of freedom (``nan`` when both stds are 0).
    """

    mean_diff: float
    ci_low: float
    ci_high: float
    df: float


def welch_ci(
    mean_a: float,
    std_a: float,
    n_a: int,
    mean_b: float,
    std_b: float,
    n_b: int,
    confidence: float = CONFIDENCE,
) -> Welch:
    """Welch confidence interval of the difference of two means from their summaries.

    Parameters
    ----------
    mean_a, std_a, n_a : float, float, int
        Mean, sample standard deviation (ddof 1) and count of the first group.
    mean_b, std_b, n_b : float, float, int
        The same for the second group (the reference).
    confidence : float
        Two-sided coverage, 0.95 by default.

    Returns
    -------
    Welch
        The interval; a degenerate one (``ci_low == ci_high``) when both stds are 0.

    Raises
    ------
    ValueError
        If a group has fewer than 2 values (no sample std) or a negative std.
    """
    if n_a < 2 or n_b < 2:
        raise ValueError(f"welch_ci: each group needs at least 2 values, got n_a={n_a}, n_b={n_b}")
    if std_a < 0 or std_b < 0 or math.isnan(std_a) or math.isnan(std_b):
        raise ValueError(f"welch_ci: standard deviations must be >= 0, got {std_a} and {std_b}")
    diff = mean_a - mean_b
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Welch(diff, diff, diff, float("nan"))
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Welch(diff, diff - half, diff + half, df)


def verdict(ci_low: float, ci_high: float, n_a: int, n_b: int) -> str:
    """``better``/``worse`` when the interval excludes 0, else ``no detectable difference``.

    ``too few seeds`` when either side has fewer than 3 seeds: the rule of
    :func:`fedpers.stats.verdict`, with the smaller side's count.
    """
    return paired_verdict(min(n_a, n_b), ci_low, ci_high)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def comparisons(report_dir: Path, name: str) -> list[tuple[str, str, str]]:
    """Every (variant, reference, metric) to compare for one benchmark.

    The rows of ``reference.csv`` (each variant against its reference, on the global
    accuracy; a reference against itself is skipped), then ``EXTRA_COMPARISONS[name]``.
    """
    out: list[tuple[str, str, str]] = []
    ref_path = report_dir / "reference.csv"
    if ref_path.exists():
        for row in _read_csv(ref_path):
            if row["variant"] != row["reference"]:
                out.append((row["variant"], row["reference"], "global_acc"))
    for item in EXTRA_COMPARISONS.get(name, []):
        if item not in out:
            out.append(item)
    return out


def welch_rows(report_dir: Path, name: str) -> list[dict[str, str]]:
    """The rows of ``welch.csv`` for one benchmark's ``report/`` folder.

    Raises
    ------
    ValueError
        If a compared variant is missing from ``summary.csv``.
    """
    summary = {row["variant"]: row for row in _read_csv(report_dir / "summary.csv")}
    rows = []
    for variant, reference, metric in comparisons(report_dir, name):
        for v in (variant, reference):
            if v not in summary:
                raise ValueError(
                    f"{report_dir / 'summary.csv'}: no variant {v!r} (compared in welch.csv)"
                )
        mean_col, std_col = METRIC_COLUMNS[metric]
        a, b = summary[variant], summary[reference]
        n_a, n_b = int(a["seeds"]), int(b["seeds"])
        w = welch_ci(
            100 * float(a[mean_col]), 100 * float(a[std_col]), n_a,
            100 * float(b[mean_col]), 100 * float(b[std_col]), n_b,
        )  # fmt: skip
        rows.append(
            {
                "variant": variant,
                "reference": reference,
                "metric": metric,
                "unit": "points",
                "mean_diff": f"{w.mean_diff:.6f}",
                "ci_low": f"{w.ci_low:.6f}",
                "ci_high": f"{w.ci_high:.6f}",
                "df": f"{w.df:.3f}",
                "n_a": str(n_a),
                "n_b": str(n_b),
                "verdict": verdict(w.ci_low, w.ci_high, n_a, n_b),
            }
        )
    return rows


#: Benchmarks rerun in part since: their earlier full sweep's report (summary.csv,
#: reference.csv, welch.csv) is kept in this subfolder of ``report/``, beside the rerun.
EARLIER = {
    "personalization": "earlier-3-seeds",
    "robustness": "earlier-sweep",
    "communication": "earlier-sweep",
    "sparsification": "earlier-sweep",
    "heterogeneity": "earlier-sweep",
    "selection": "earlier-sweep",
}


def report_dir_of(name: str, benchmarks_dir: Path = BENCHMARKS_DIR) -> Path:
    """The folder whose ``summary.csv`` the Welch rows of benchmark ``name`` come from."""
    report = benchmarks_dir / name / "report"
    return report / EARLIER[name] if name in EARLIER else report


def write_welch(name: str, benchmarks_dir: Path = BENCHMARKS_DIR) -> Path:
    """Write ``welch.csv`` beside the benchmark's summary (:func:`report_dir_of`) and
    return its path."""
    report_dir = report_dir_of(name, benchmarks_dir)
    rows = welch_rows(report_dir, name)
    path = report_dir / "welch.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    logger.info("%s: %d comparisons", path, len(rows))
    return path


def main(argv: list[str] | None = None) -> None:
    """Command line: write welch.csv for the named benchmarks (default: all)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS), help="benchmark folder names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.names:
        write_welch(name)


if __name__ == "__main__":
    main()
