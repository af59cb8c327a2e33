"""benchmarks/anomaly/thresholds.py: the committed thresholds.csv is what the script
computes from the committed report files, and its arithmetic is a paired t interval."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "anomaly" / "report"


def _script():
    spec = importlib.util.spec_from_file_location("anomaly_thresholds",
                                                  ROOT / "benchmarks/anomaly/thresholds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_thresholds_csv_is_what_the_script_computes(tmp_path):
    committed = (REPORT / "thresholds.csv").read_text()
    for name in ("runs.csv", "runs.csv.gz", "clients.csv", "clients.csv.gz", "report.json"):
        if (REPORT / name).exists():
            (tmp_path / name).write_bytes((REPORT / name).read_bytes())
    _script().write(tmp_path)
    assert (tmp_path / "thresholds.csv").read_text() == committed


def test_thresholds_are_paired_t_intervals_over_seeds():
    from fedpers.report_data import read_data

    _, runs = read_data(REPORT)
    rows = {(r["variant"], r["statistic"]): r
            for r in csv.DictReader((REPORT / "thresholds.csv").open())}
    mine = [r for r in runs if r.variant == "fmnist-none"]
    d = np.array([r.final("eval/client_f1_mean") - r.final("eval/client_f1_global_threshold_mean")
                  for r in mine])
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    row = rows[("fmnist-none", "mean")]
    assert int(row["n_seeds"]) == len(d) == 3
    assert float(row["mean_diff"]) == pytest.approx(d.mean(), abs=1e-6)
    assert float(row["ci_low"]) == pytest.approx(d.mean() - half, abs=1e-6)
    assert float(row["ci_high"]) == pytest.approx(d.mean() + half, abs=1e-6)
    assert float(row["p_seeds"]) == pytest.approx(stats.ttest_1samp(d, 0).pvalue, abs=1e-6)
