"""The anomaly-detection use case end to end: the shuttle-ad reference scenario
(three devices, five rounds) through the Simulation Engine, then `fedpers detect`."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from conftest import metric_history

from fedpers.cli import main
from fedpers.config import parse_run_config
from fedpers.detect import Detector
from fedpers.detect_files import DetectError, read_input
from fedpers.simulation import run_simulation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shuttle_run(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('ad') / 'mlflow.db'}"
    cfg = parse_run_config({"task": "shuttle-ad", "num-clients": 3, "num-server-rounds": 5,
                            "local-epochs": 5, "tracking-uri": uri})
    return uri, run_simulation(cfg)


def test_reference_scenario_reaches_auroc_099(shuttle_run):
    uri, run_id = shuttle_run
    hist = metric_history(uri, run_id)
    assert [s for s, _ in hist["eval/global_auroc"]] == [1, 2, 3, 4, 5]
    assert hist["eval/global_auroc"][-1][1] >= 0.99
    for key in ("eval/global_auprc", "eval/global_f1", "eval/client_auroc_mean",
                "eval/threshold"):
        assert key in hist, key
    assert 0.0 < hist["eval/global_f1"][-1][1] <= 1.0
    # each device's F1 at the server's one threshold, from the second evaluation on (the
    # first has no global threshold yet), next to the F1 at its own threshold
    assert [s for s, _ in hist["eval/client_f1_global_threshold_mean"]] == [2, 3, 4, 5]
    assert [s for s, _ in hist["eval/client_f1_mean"]] == [1, 2, 3, 4, 5]


def _shuttle_rows(tmp_path: Path, n: int = 300) -> tuple[Path, np.ndarray]:
    import river.datasets

    src = Path(river.datasets.__file__).parent / "shuttle.csv.gz"
    lines = gzip.open(src, "rt").read().splitlines()
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines[: n + 1]) + "\n")  # header + n rows, label column last
    labels = np.array([int(r.split(",")[-1]) for r in lines[1: n + 1]])
    return path, labels


def test_detect_scores_and_flags_rows(shuttle_run, tmp_path, capsys):
    uri, run_id = shuttle_run
    rows, labels = _shuttle_rows(tmp_path)
    out = tmp_path / "scores.csv"
    assert main(["detect", "--run", run_id, "--input", str(rows), "--output", str(out),
                 "--tracking-uri", uri]) == 0
    lines = out.read_text().strip().splitlines()
    assert lines[0] == "row,score,anomaly" and len(lines) == 1 + len(labels)
    flags = np.array([int(line.split(",")[2]) for line in lines[1:]])
    scores = np.array([float(line.split(",")[1]) for line in lines[1:]])
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels, scores) > 0.95
    assert flags[labels == 1].mean() > 0.8  # most anomalies flagged
    assert flags[labels == 0].mean() < 0.2  # few false alarms (threshold at p95)
    # the same rows as .npy without the label column give the same scores
    npy = tmp_path / "rows.npy"
    np.save(npy, read_input(rows))
    det = Detector.from_run(run_id, uri)
    s2, _ = det.score(np.load(npy))
    assert np.allclose(s2, scores, rtol=1e-6)


def test_detect_rejects_bad_input(shuttle_run, tmp_path):
    uri, run_id = shuttle_run
    det = Detector.from_run(run_id, uri)
    with pytest.raises(DetectError, match="expects 9"):
        det.score(np.zeros((2, 5)))
    bad = tmp_path / "bad.txt"
    bad.write_text("1,2\n")
    with pytest.raises(DetectError, match=".csv or .npy"):
        read_input(bad)
