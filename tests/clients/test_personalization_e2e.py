"""FedRep and Ditto end to end through Flower's Simulation Engine, read back from MLflow."""

from __future__ import annotations

import pytest
from conftest import metric_history
from mlflow.tracking import MlflowClient

from fedpers.config import parse_run_config
from fedpers.simulation import run_simulation

pytestmark = pytest.mark.slow

BASE = {"task": "digits", "num-clients": 3, "num-server-rounds": 2, "local-epochs": 2,
        "momentum": 0.9,
        "partition": "dirichlet", "alpha": 0.5, "batch-size": 32, "lr": 0.1,
        "fedrep-head-epochs": 2}
CLIENT_KEYS = [f"eval/client_accuracy_{s}" for s in ("mean", "std", "p10", "min")]
HEAD_BYTES = (32 * 10 + 10) * 4  # the digits MLP's head, fp32


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('pers') / 'mlflow.db'}"
    out = {}
    for name in ("fedrep", "ditto"):
        cfg = parse_run_config({**BASE, "personalization": name, "tracking-uri": uri,
                                "experiment": "personalization-e2e"})
        out[name] = run_simulation(cfg)
    return uri, out


@pytest.mark.parametrize("name", ["fedrep", "ditto"])
def test_personalised_client_metrics_every_round(runs, name):
    uri, ids = runs
    hist = metric_history(uri, ids[name])
    for key in CLIENT_KEYS:
        assert [s for s, _ in hist[key]] == [1, 2], key
    last = {k: dict(hist[k])[2] for k in CLIENT_KEYS}
    assert last["eval/client_accuracy_min"] <= last["eval/client_accuracy_p10"] \
        <= last["eval/client_accuracy_mean"]
    assert last["eval/client_accuracy_mean"] > 0.5, last  # chance is 0.1
    assert [v for _, v in hist["clients/trained"]] == [3, 3]
    assert [v for _, v in hist["clients/rejected"]] == [0, 0]
    client = MlflowClient(tracking_uri=uri)
    rows = open(client.download_artifacts(ids[name], "client_metrics.csv")).read().split()
    assert len(rows) == 1 + 3
    assert client.get_run(ids[name]).data.params["personalization"] == name


def test_fedrep_uploads_no_head(runs):
    """Ditto uploads the whole model, FedRep the body only: 3 heads less per round."""
    uri, ids = runs
    up = {name: dict(metric_history(uri, run_id)["comm/bytes_up"]) for name, run_id in
          ids.items()}
    for rnd in (1, 2):
        assert up["ditto"][rnd] - up["fedrep"][rnd] >= 3 * HEAD_BYTES
