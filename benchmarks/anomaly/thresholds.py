"""Own threshold against the server's one threshold, paired within each run.

Every anomaly run logs each device's F1 twice at the same round: with the threshold the
device calibrated on its own normal validation rows (``eval/client_f1_*``) and with the
server's one threshold (``eval/client_f1_global_threshold_*``). Their difference on the
same run, at the final round, pairs naturally; over the seeds it gives a mean, a 95%
Student-t interval and a verdict (``fedpers.stats``), per variant.

Reads only the committed report files (``report/runs.csv`` or ``runs.csv.gz`` and
``report.json``) and writes ``report/thresholds.csv``::

    .venv/bin/python benchmarks/anomaly/thresholds.py [REPORT_FOLDER]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from fedpers.report_data import read_data
from fedpers.stats import paired_t, verdict

HERE = Path(__file__).resolve().parent
#: (statistic, own-threshold key, global-threshold key)
PAIRS = (
    ("mean", "eval/client_f1_mean", "eval/client_f1_global_threshold_mean"),
    ("p10", "eval/client_f1_p10", "eval/client_f1_global_threshold_p10"),
)
COLUMNS = ("variant", "statistic", "n_seeds", "own_mean", "global_mean", "mean_diff",
           "ci_low", "ci_high", "p_seeds", "verdict")


def threshold_rows(folder: str | Path) -> list[dict[str, object]]:
    """One row per variant and statistic: own minus global threshold F1 over seeds."""
    meta, runs = read_data(folder)
    order = list(dict.fromkeys([*meta.variants, *(r.variant for r in runs)]))
    rows: list[dict[str, object]] = []
    for variant in order:
        mine = [r for r in runs if r.variant == variant]
        for stat, own_key, global_key in PAIRS:
            pairs = [(r.final(own_key), r.final(global_key)) for r in mine]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if not pairs:
                continue
            res = paired_t([a - b for a, b in pairs])
            rows.append({
                "variant": variant, "statistic": stat, "n_seeds": res.n,
                "own_mean": sum(a for a, _ in pairs) / len(pairs),
                "global_mean": sum(b for _, b in pairs) / len(pairs),
                "mean_diff": res.mean, "ci_low": res.ci_low, "ci_high": res.ci_high,
                "p_seeds": res.p, "verdict": verdict(res.n, res.ci_low, res.ci_high),
            })
    return rows


def write(folder: str | Path) -> Path:
    out = Path(folder) / "thresholds.csv"
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for row in threshold_rows(folder):
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v)
                        for k, v in row.items()})
    return out


if __name__ == "__main__":
    print(f"written: {write(sys.argv[1] if len(sys.argv) > 1 else HERE / 'report')}")
