"""End to end through Flower's real Simulation Engine (Ray), read back from MLflow."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import metric_history
from mlflow.tracking import MlflowClient

from fedpers.byte_count import content_bytes
from fedpers.config import parse_run_config
from fedpers.run_params import applicable_params
from fedpers.simulation import Resources, auto_packing, ray_workers, run_simulation

pytestmark = pytest.mark.slow

BASE = {"task": "digits", "num-clients": 3, "num-server-rounds": 2, "local-epochs": 2,
        "momentum": 0.9,
        "partition": "iid", "batch-size": 32, "lr": 0.1}

CONTRACT = ["eval/global_accuracy", "eval/client_accuracy_mean", "eval/client_accuracy_std",
            "eval/client_accuracy_p10", "train/loss", "comm/bytes_up", "comm/bytes_down",
            "comm/bytes_up_total", "comm/bytes_down_total", "clients/trained",
            "clients/failed"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'mlflow.db'}"
    cfg = parse_run_config({**BASE, "tracking-uri": uri, "experiment": "e2e"})
    run_id = run_simulation(cfg)
    return cfg, uri, run_id


def test_every_contract_metric_is_logged_each_round(digits_run):
    _, uri, run_id = digits_run
    hist = metric_history(uri, run_id)
    for key in CONTRACT:
        assert key in hist, key
        assert [s for s, _ in hist[key]] == [1, 2], key
    assert all(v == 3 for _, v in hist["clients/trained"])
    assert all(v == 0 for _, v in hist["clients/failed"])
    acc = dict(hist["eval/global_accuracy"])
    assert acc[2] > 0.5  # digits learns fast; chance is 0.1


def test_bytes_match_an_independent_serialisation(digits_run):
    """fp32 FedAvg: each client uploads its model arrays + a 4-key MetricRecord."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    _, uri, run_id = digits_run
    hist = metric_history(uri, run_id)
    client = MlflowClient(tracking_uri=uri)
    local = client.download_artifacts(run_id, "model")
    import torch

    state = torch.load(f"{local}/global_model.pt", weights_only=True)
    upload = RecordDict({
        "arrays": ArrayRecord({k: Array(v.numpy()) for k, v in state.items()}),
        "metrics": MetricRecord({"num-examples": 1, "train-loss": 0.1, "steps": 1,
                                 "partition-id": 0})})
    per_client = content_bytes(upload)
    n_params = sum(v.numel() for v in state.values())
    assert per_client > 4 * n_params
    # round 1: 3 train uploads + 3 evaluation replies (metrics only, a few hundred bytes)
    up1 = dict(hist["comm/bytes_up"])[1]
    assert 3 * per_client <= up1 < 3 * per_client + 3 * 1000
    # downlink: the same global arrays to 3 clients for train and again for evaluate
    down1 = dict(hist["comm/bytes_down"])[1]
    assert 6 * (per_client - 200) <= down1 <= 6 * (per_client + 200)
    totals = dict(hist["comm/bytes_up_total"])
    assert totals[2] == pytest.approx(sum(v for _, v in hist["comm/bytes_up"]))


def test_params_tags_and_artifacts(digits_run):
    cfg, uri, run_id = digits_run
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    # the keys that apply to the config the run ran with (packing = auto chose how to
    # simulate it, fedpers.simulation.auto_packing) are params; bookkeeping keys are tags
    workers = ray_workers(Resources())
    ran = cfg if workers is None else auto_packing(cfg, workers)
    assert set(applicable_params(ran)) == set(run.data.params)
    assert run.data.params["virtual-nodes"] == str(ran.virtual_nodes)
    assert run.data.params["task"] == "digits"
    assert "alpha" not in run.data.params  # partition = "iid" has no alpha
    assert run.data.tags["fedpers.tracking-uri"] == uri
    for tag in ("git_commit", "version.flwr", "version.torch", "version.fedpers"):
        assert tag in run.data.tags
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "client_metrics.csv", "participation.csv", "model"} <= names
    csv_path = client.download_artifacts(run_id, "client_metrics.csv")
    rows = open(csv_path).read().strip().splitlines()
    assert rows[0].startswith("partition-id") and len(rows) == 1 + 3
    assert run.info.status == "FINISHED"


def test_same_seed_same_metrics(digits_run, tmp_path):
    cfg, _, run_id = digits_run
    uri2 = f"sqlite:///{tmp_path / 'again.db'}"
    again = run_simulation(cfg.replace(**{"tracking-uri": uri2, "mlflow-run-id": ""}))
    a = metric_history(cfg.tracking_uri, run_id)
    b = metric_history(uri2, again)
    assert a.keys() == b.keys()
    for key in a:
        assert [v for _, v in a[key]] == [v for _, v in b[key]], key


def test_faulty_clients_are_counted_not_averaged(tracking_uri):
    from fedpers.client_app import build_client_app
    from tests.faults import fault_mod

    cfg = parse_run_config({**BASE, "num-clients": 4, "tracking-uri": tracking_uri})
    app = build_client_app(mods=[fault_mod({1: "raise", 2: "nan", 3: "shape"})])
    run_id = run_simulation(cfg, client_app=app)
    hist = metric_history(tracking_uri, run_id)
    assert [v for _, v in hist["clients/trained"]] == [1, 1]
    assert [v for _, v in hist["clients/failed"]] == [1, 1]
    assert [v for _, v in hist["clients/rejected"]] == [2, 2]
    assert np.isfinite([v for _, v in hist["eval/global_accuracy"]]).all()


def test_client_past_the_round_timeout_is_counted_failed(tracking_uri):
    from fedpers.client_app import build_client_app
    from tests.faults import fault_mod

    # one SuperNode per client: packed, a hung client would hold up the clients it
    # shares a message with (docs/running.md, "Many clients in simulation")
    cfg = parse_run_config({**BASE, "tracking-uri": tracking_uri, "round-timeout": 5.0,
                            "packing": "off"})
    app = build_client_app(mods=[fault_mod({2: "hang"}, hang_seconds=8.0)])
    run_id = run_simulation(cfg, client_app=app)
    hist = metric_history(tracking_uri, run_id)
    assert [v for _, v in hist["clients/failed"]] == [1, 1]
    assert [v for _, v in hist["clients/trained"]] == [2, 2]


def test_mid_round_dropouts_are_counted_and_a_round_below_the_minimum_is_skipped(
        tracking_uri):
    """Devices that drop out mid-round (seeded draws of the simulated clock) never
    deliver; a round left with fewer than min-train-clients updates is skipped (the
    global model stays as it was) and the run goes on."""
    from fedpers.devices import DeviceParams, build_clock

    cfg = parse_run_config({**BASE, "num-clients": 6, "num-server-rounds": 4,
                            "fraction-train": 1.0, "local-epochs": 1,
                            "device-profile": "lognormal", "device-dropout": 0.5,
                            "min-train-clients": 3, "seed": 1, "tracking-uri": tracking_uri})
    clock = build_clock(DeviceParams.from_config(cfg))
    rounds = range(1, 5)
    dropped = [sum(clock.drops_out(r, p) for p in range(6)) for r in rounds]
    skipped = [r for r, d in zip(rounds, dropped, strict=True) if 6 - d < 3]
    assert skipped and skipped[0] > 1 and len(skipped) < 4  # seed 1: both kinds of round
    run_id = run_simulation(cfg)
    hist = metric_history(tracking_uri, run_id)
    assert [v for _, v in hist["clients/dropped"]] == dropped
    assert [v for _, v in hist["clients/trained"]] == [6 - d for d in dropped]
    assert [v for _, v in hist["clients/failed"]] == [0] * 4
    acc = dict(hist["eval/global_accuracy"])
    assert sorted(acc) == list(rounds)
    for r in skipped:  # the model did not move, so neither did its accuracy
        assert acc[r] == acc[r - 1]


def test_run_with_no_update_ever_aggregated_is_failed(tracking_uri):
    from fedpers.client_app import build_client_app
    from tests.faults import fault_mod

    cfg = parse_run_config({**BASE, "num-server-rounds": 1, "tracking-uri": tracking_uri})
    app = build_client_app(mods=[fault_mod({0: "raise", 1: "nan", 2: "raise"})])
    with pytest.raises(Exception, match="no round aggregated"):
        run_simulation(cfg, client_app=app)
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
    hist = metric_history(tracking_uri, runs[0].info.run_id)
    assert [v for _, v in hist["clients/failed"]] == [2]  # the round's metrics are kept
