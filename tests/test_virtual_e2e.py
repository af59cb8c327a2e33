"""Virtual clients end to end (issue 9): the same run with one SuperNode per client and
with 2 SuperNodes that serve 8 clients in turn (4 per round: each node gets two of a
call's messages, which Ray's workers may run at once), and with those 2 nodes serving
their 2 clients of a call in one packed message (``clients-per-call``), through Flower's
Simulation Engine.

The combination keeps state on every client (SCAFFOLD's c_i, FedRep's private head,
top-k's error-feedback residual) and puts rounds on the simulated clock (with mid-round
dropouts): any state served to the wrong client, lost between calls or a reply
attributed to the wrong client changes the metrics. Both runs must agree exactly.
"""

from __future__ import annotations

import csv

import pytest
from conftest import metric_history
from mlflow.tracking import MlflowClient

from fedpers.config import parse_run_config
from fedpers.simulation import run_simulation

pytestmark = pytest.mark.slow

BASE = {"task": "digits", "num-clients": 8, "num-server-rounds": 3, "partition": "iid",
        "fraction-train": 0.5, "fraction-evaluate": 0.5, "local-epochs": 1,
        "batch-size": 32, "lr": 0.1, "strategy": "scaffold", "personalization": "fedrep",
        "fedrep-head-epochs": 1, "codec": "topk", "sparse-fraction": 0.1,
        "error-feedback": True, "device-profile": "lognormal", "device-dropout": 0.1}


def _artifact_rows(uri: str, run_id: str, name: str) -> list[dict[str, str]]:
    path = MlflowClient(tracking_uri=uri).download_artifacts(run_id, name)
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_virtual_nodes_give_exactly_the_results_of_one_node_per_client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state_dir = tmp_path / "client-state"
    common = {**BASE, "tracking-uri": uri, "client-state-dir": str(state_dir)}
    ref_id = run_simulation(parse_run_config({**common, "packing": "off"}))
    virt_id = run_simulation(parse_run_config({**common, "virtual-nodes": 2}))
    packed_id = run_simulation(parse_run_config({**common, "virtual-nodes": 2,
                                                 "clients-per-call": 2}))
    # the default (packing = auto) on 2 Ray workers: 2 SuperNodes, 2 clients a message
    auto_id = run_simulation(parse_run_config(common), num_cpus=2)
    params = MlflowClient(tracking_uri=uri).get_run(auto_id).data.params
    assert (params["virtual-nodes"], params["clients-per-call"]) == ("2", "2")
    _assert_same_run(uri, ref_id, virt_id, state_dir)
    _assert_same_run(uri, ref_id, packed_id, state_dir)
    _assert_same_run(uri, ref_id, auto_id, state_dir)


def _assert_same_run(uri: str, ref_id: str, virt_id: str, state_dir) -> None:
    want, got = metric_history(uri, ref_id), metric_history(uri, virt_id)
    for key in ("eval/client_accuracy_mean", "eval/client_loss_mean", "eval/global_accuracy",
                "train/loss", "comm/bytes_up", "comm/bytes_down", "comm/update_distortion",
                "time/round_s", "clients/trained", "clients/dropped",
                "fairness/jain_selection"):
        assert [s for s, _ in want[key]] == [1, 2, 3], key
    assert set(got) == set(want)
    for key, history in want.items():
        assert got[key] == history, key  # bit for bit: no tolerance needed

    participation = _artifact_rows(uri, ref_id, "participation.csv")
    assert participation == _artifact_rows(uri, virt_id, "participation.csv")
    # some client trained in two rounds: its state had to come back from disk
    assert max(int(r["times-selected"]) for r in participation) >= 2
    clients = _artifact_rows(uri, ref_id, "client_metrics.csv")
    assert len(clients) == 4
    assert clients == _artifact_rows(uri, virt_id, "client_metrics.csv")
    # the virtual clients' state was on disk during the run and is gone after it
    assert not (state_dir / virt_id).exists()
