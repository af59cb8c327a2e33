"""The app on Flower's Deployment Engine: a SuperLink and 2 SuperNodes on loopback,
2 rounds, logged to MLflow; our byte totals set against the SuperLink's own count."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import ROOT, metric_history
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_two_supernodes_two_rounds(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    work = tmp_path / "deploy"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "deploy_local.sh"), "-n", "2", "-t", "480", "-q",
         "-w", str(work), "--", "task=digits", "num-server-rounds=2", "partition=iid",
         f"tracking-uri={uri}", "experiment=deploy-test"],
        capture_output=True, text=True, timeout=700, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((work / "result.json").read_text())
    assert result["status"] == "finished:completed"

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("deploy-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    hist = metric_history(uri, runs[0].info.run_id)
    assert [v for _, v in hist["clients/trained"]] == [2, 2]
    assert [v for _, v in hist["clients/failed"]] == [0, 0]
    assert runs[0].data.params["num-clients"] == "2"

    ours_up = hist["comm/bytes_up_total"][-1][1]
    ours_down = hist["comm/bytes_down_total"][-1][1]
    link = result["superlink_bytes"]
    # The SuperLink counts SuperNode<->SuperLink traffic: inbound = what the nodes
    # pushed (our uplink), outbound = what they pulled (our downlink), plus per-message
    # request/response framing (docs/deployment.md has the measured difference).
    report = (f"ours up {ours_up:.0f} down {ours_down:.0f}; SuperLink inbound "
              f"{link['inbound-bytes']} outbound {link['outbound-bytes']}")
    (tmp_path / "bytes.txt").write_text(report)
    print(report)
    assert 0.8 * ours_up <= link["inbound-bytes"] <= 1.2 * ours_up + 20_000, report
    assert 0.8 * ours_down <= link["outbound-bytes"] <= 1.2 * ours_down + 20_000, report
