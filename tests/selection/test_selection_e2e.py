"""Devices and selection end to end through Flower's Simulation Engine (two runs)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import metric_history

from fedpers.config import parse_run_config
from fedpers.data import DataSpec, load_federated
from fedpers.devices import DeviceParams, build_clock
from fedpers.seeds import Stream, derive_seed
from fedpers.selection import SELECTORS
from fedpers.simulation import run_simulation

pytestmark = pytest.mark.slow

BASE = {"task": "digits", "num-clients": 6, "num-server-rounds": 3, "partition": "iid",
        "fraction-train": 0.5, "local-epochs": 1, "batch-size": 32, "lr": 0.1,
        "device-profile": "lognormal", "round-deadline": 2.0}
ROUNDS = [1, 2, 3]


def series(hist, key):
    assert [s for s, _ in hist[key]] == ROUNDS, key
    return np.array([v for _, v in hist[key]])


def upload_bytes(uri: str, run_id: str) -> int:
    """One client's train reply: the model's arrays and the 4-key MetricRecord."""
    import torch
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from mlflow.tracking import MlflowClient

    from fedpers.byte_count import content_bytes

    local = MlflowClient(tracking_uri=uri).download_artifacts(run_id, "model")
    state = torch.load(f"{local}/global_model.pt", weights_only=True)
    return content_bytes(RecordDict({
        "arrays": ArrayRecord({k: Array(v.numpy()) for k, v in state.items()}),
        "metrics": MetricRecord({"num-examples": 1, "train-loss": 0.1, "steps": 1,
                                 "partition-id": 0})}))


def check_clock_metrics(hist, deadline: float) -> dict[str, np.ndarray]:
    m = {k: series(hist, k) for k in ("time/round_s", "time/total_s", "clients/dropped",
                                      "clients/selected", "clients/trained", "clients/failed",
                                      "clients/rejected", "fairness/jain_selection")}
    assert np.all(m["time/round_s"] > 0) and np.all(m["time/round_s"] <= deadline + 1e-9)
    assert np.allclose(m["time/total_s"], np.cumsum(m["time/round_s"]))
    assert np.array_equal(m["clients/selected"], m["clients/trained"] + m["clients/failed"]
                          + m["clients/rejected"] + m["clients/dropped"])
    assert np.all(m["clients/failed"] == 0) and np.all(m["clients/rejected"] == 0)
    assert np.all((m["fairness/jain_selection"] >= 1 / 6) & (m["fairness/jain_selection"] <= 1))
    return m


def test_oort_with_a_deadline_drops_stragglers_and_logs_the_clock(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # seed 2: every round some selected clients finish in time (so every round is
    # evaluated) and some are too slow or drop out (trained 1, 3, 1; dropped 2, 0, 2)
    cfg = parse_run_config({**BASE, "selection": "oort", "device-availability": 0.9,
                            "device-dropout": 0.1, "seed": 2, "tracking-uri": uri})
    run_id = run_simulation(cfg)
    hist = metric_history(uri, run_id)
    m = check_clock_metrics(hist, 2.0)
    assert m["clients/dropped"].sum() > 0 and np.all(m["clients/trained"] > 0)
    assert np.all(m["clients/selected"] <= 3)
    # a late client's upload is abandoned: up = on-time train replies + 6 evaluation replies
    per_client = upload_bytes(uri, run_id)
    up = series(hist, "comm/bytes_up")
    trained = m["clients/trained"]
    assert np.all(trained * per_client <= up) and np.all(up < trained * per_client + 6 * 1000)
    assert np.isfinite(series(hist, "eval/global_accuracy")).all()
    # participation.csv: who was picked how often, next to each device's profile
    import csv

    from mlflow.tracking import MlflowClient
    path = MlflowClient(tracking_uri=uri).download_artifacts(run_id, "participation.csv")
    rows = list(csv.DictReader(open(path)))
    assert [int(r["partition-id"]) for r in rows] == list(range(6))
    counts = np.array([int(r["times-selected"]) for r in rows])
    assert counts.sum() == m["clients/selected"].sum()
    jain = counts.sum() ** 2 / (6 * np.square(counts).sum())
    assert jain == pytest.approx(m["fairness/jain_selection"][-1])
    profiles = build_clock(DeviceParams.from_config(cfg)).profiles
    for r in rows:
        own = profiles[int(r["partition-id"])]
        assert float(r["compute-sps"]) == pytest.approx(own.compute_sps)
        if int(r["times-selected"]) == 0:  # never picked: no loss, no last round
            assert r["last-loss"] == "" and int(r["last-round"]) == 0
        else:
            assert 1 <= int(r["last-round"]) <= 3


def test_fedprox_does_partial_work_within_the_deadline(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = parse_run_config({**BASE, "strategy": "fedprox", "selection": "uniform",
                            "tracking-uri": uri})
    # the server's own choices (all clients online), and who could not do full work in time
    clock = build_clock(DeviceParams.from_config(cfg))
    fed = load_federated(DataSpec.from_config(cfg))
    too_slow = {p for p, c in enumerate(fed.clients)
                if c.num_train / clock.profiles[p].compute_sps > cfg.round_deadline}
    chosen = set().union(*(SELECTORS["uniform"].select(
        r, range(6), 3, np.random.default_rng(derive_seed(cfg.seed, Stream.SELECT_TRAIN, r)))
        for r in ROUNDS))
    assert chosen & too_slow  # partial work was needed
    run_id = run_simulation(cfg)
    m = check_clock_metrics(metric_history(uri, run_id), 2.0)
    # every selected client delivered the steps that fit: nobody is dropped
    assert np.all(m["clients/dropped"] == 0) and np.all(m["clients/trained"] == 3)
