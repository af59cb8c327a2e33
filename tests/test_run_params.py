"""What a run tells MLflow about itself: the params that apply, bookkeeping as tags,
rejection reasons only once they occur, and the experiment kind MLflow's UI reads."""

from __future__ import annotations

import pytest

from fedpers.config import parse_run_config
from fedpers.run_params import APPLIES, BOOKKEEPING_KEYS, applicable_params, bookkeeping_tags
from fedpers.server_loop import RejectReasons
from fedpers.tracking import Tracker
from fedpers.tracking_store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, ensure_experiment


def _params(**overrides):
    raw = {"task": "digits", **{k.replace("_", "-"): v for k, v in overrides.items()}}
    return applicable_params(parse_run_config(raw))


def test_every_conditional_key_is_a_run_config_key():
    keys = set(parse_run_config({}).to_dict())
    assert set(APPLIES) <= keys
    assert set(BOOKKEEPING_KEYS) <= keys


def test_partition_keys_only_with_their_partition():
    iid = _params(partition="iid")
    assert "alpha" not in iid and "classes-per-client" not in iid
    assert iid["partition"] == "iid" and iid["seed"] == 42
    dirichlet = _params(partition="dirichlet", alpha=0.1)
    assert dirichlet["alpha"] == 0.1 and "classes-per-client" not in dirichlet
    patho = _params(partition="pathological")
    assert patho["classes-per-client"] == 2 and "alpha" not in patho


def test_component_keys_only_with_their_component():
    plain = _params()
    for key in ("proximal-mu", "server-lr", "server-momentum", "ditto-lambda",
                "apfl-alpha", "finetune-epochs", "qsgd-levels", "sparse-fraction",
                "quant-block-size", "error-feedback", "trim-fraction", "krum-f",
                "dp-clip-norm", "attack-scale", "pow-d", "device-dropout",
                "anomaly-classes", "clients-per-call"):
        assert key not in plain, key
    assert _params(strategy="fedprox")["proximal-mu"] == 0.01
    assert "server-lr" in _params(strategy="fedadam")
    assert "server-momentum" not in _params(strategy="scaffold")
    assert _params(personalization="ditto")["ditto-lambda"] == 0.1
    assert "ditto-lambda" not in _params(personalization="apfl")
    q8 = _params(codec="q8")
    assert "quant-block-size" in q8 and "error-feedback" in q8 and "qsgd-levels" not in q8
    assert "quant-block-size" in _params(codec_down="q8")  # the broadcast's codec too
    topk = _params(codec="topk")
    assert "sparse-fraction" in topk and "quant-block-size" not in topk
    assert "anomaly-classes" in _params(task="fmnist-ad")


def test_bookkeeping_keys_are_tags_not_params():
    cfg = parse_run_config({"task": "digits", "tracking-uri": "sqlite:///x.db",
                            "mlflow-run-id": "abc"})
    params = applicable_params(cfg)
    assert not set(BOOKKEEPING_KEYS) & set(params)
    assert bookkeeping_tags(cfg) == {"fedpers.tracking-uri": "sqlite:///x.db",
                                     "fedpers.experiment": "fedpers",
                                     "fedpers.mlflow-run-id": "abc"}
    assert "fedpers.mlflow-run-id" not in bookkeeping_tags(parse_run_config({}))


def test_rejection_reasons_are_logged_from_their_first_occurrence():
    reasons = RejectReasons()
    zero = {"norm": 0, "shape": 0}
    assert reasons.metrics(zero) == {}
    assert reasons.metrics({"norm": 2, "shape": 0}) == {"clients/rejected_norm": 2.0}
    # then every round, zeros included, so the latest value is the last round's
    assert reasons.metrics(zero) == {"clients/rejected_norm": 0.0}
    # a resumed run knows the reasons seen so far from the checkpoint's state
    resumed = RejectReasons()
    resumed.load_state_dict(reasons.state_dict())
    assert resumed.metrics(zero) == {"clients/rejected_norm": 0.0}
    assert RejectReasons().metrics(zero) == {}


def test_experiments_carry_the_model_training_kind(tracking_uri):
    client = Tracker.connect(tracking_uri, create=True)
    exp_id = ensure_experiment(client, tracking_uri, "new")
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # an experiment made elsewhere, without the tag, gets it when fedpers logs into it
    old = client.create_experiment("made-by-mlflow")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert ensure_experiment(client, tracking_uri, "made-by-mlflow") == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # a kind someone chose is kept
    other = client.create_experiment("genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    ensure_experiment(client, tracking_uri, "genai")
    assert client.get_experiment(other).tags[EXPERIMENT_KIND_TAG] == "genai_development"


@pytest.mark.parametrize("key", sorted(APPLIES))
def test_each_conditional_key_applies_to_some_config(key):
    """No condition is dead: each key is logged under at least one valid config."""
    configs = [{}, {"partition": "pathological"}, {"strategy": "fedprox"},
               {"strategy": "fedavgm"}, {"codec": "qsgd", "error-feedback": True},
               {"codec": "topk"}, {"personalization": "finetune"},
               {"personalization": "fedrep"}, {"personalization": "ditto"},
               {"personalization": "apfl"},
               {"device-profile": "lognormal"}, {"selection": "pow-d", "pow-d": 2},
               {"aggregation": "trimmed-mean"}, {"aggregation": "multi-krum",
                                                 "num-clients": 10},
               {"attack": "scale", "attack-fraction": 0.1}, {"dp": "client-clipping"},
               {"task": "fmnist-ad"}, {"virtual-nodes": 2, "clients-per-call": 2},
               {"device-profile": "trace", "device-trace": "x.csv"}]
    hits = []
    for raw in configs:
        try:
            cfg = parse_run_config({"task": "digits", **raw})
        except Exception:  # noqa: BLE001 - a combination this config does not allow
            continue
        hits.append(key in applicable_params(cfg))
    assert any(hits), key
