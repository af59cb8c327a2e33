"""Run-config parsing: defaults agree with pyproject, bad input fails naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedpers.config import ConfigError, RunConfig, config_keys, parse_run_config
from fedpers.config_files import load_config_file, parse_set_args

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_declares_every_key_with_the_same_default():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"]
    assert declared == config_keys()


def test_issue_contract_keys_exist():
    keys = config_keys()
    for key in ("task", "num-clients", "num-server-rounds", "fraction-train", "local-epochs",
                "batch-size", "lr", "partition", "alpha", "classes-per-client", "seed",
                "strategy", "personalization", "codec", "selection"):
        assert key in keys, key
    assert (keys["strategy"], keys["personalization"], keys["codec"], keys["selection"]) == (
        "fedavg", "none", "none", "uniform")


def test_defaults_parse_and_config_is_frozen():
    cfg = parse_run_config({})
    assert isinstance(cfg, RunConfig)
    with pytest.raises(AttributeError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_coercion_from_strings_and_ints():
    cfg = parse_run_config({"num-clients": "7", "lr": 1, "alpha": "0.5"})
    assert cfg.num_clients == 7 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.alpha == 0.5


@pytest.mark.parametrize("raw, fragment", [
    ({"num-clinets": 3}, "unknown run-config key(s) 'num-clinets'"),
    ({"num-clients": 0}, "'num-clients' = 0: must be > 0"),
    ({"num-clients": "many"}, "'num-clients': expected an integer"),
    ({"fraction-train": 1.5}, "'fraction-train' = 1.5: must be in (0, 1]"),
    ({"lr": -0.1}, "'lr' = -0.1: must be > 0"),
    ({"partition": "weird"}, "'partition' = 'weird': must be one of iid, dirichlet"),
    ({"strategy": "fedfoo"}, "'strategy': unknown name 'fedfoo'; valid names: fedadam, fedavg"),
    ({"task": "cifar"}, "'task': unknown name 'cifar'; valid names: digits"),
    ({"codec": "zip"}, "'codec': unknown name 'zip'"),
    ({"selection": "best"}, "'selection': unknown name 'best'"),
    ({"personalization": "magic"}, "'personalization': unknown name 'magic'"),
    ({"anomaly-classes": "a,b"}, "'anomaly-classes'"),
    ({"partition": "natural", "task": "digits"}, "'partition' = 'natural'"),
    ({"task": "npz"}, "'data-dir'"),
])
def test_bad_input_names_the_key(raw, fragment):
    with pytest.raises(ConfigError) as err:
        parse_run_config(raw)
    assert fragment in str(err.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys: .*num-clients"):
        parse_run_config({"rounds": 3})


def test_set_args_parse_toml_values():
    got = parse_set_args(["num-clients=3", "lr=0.1", "task=shuttle-ad", "flag=true",
                          "name='a b'"])
    assert got == {"num-clients": 3, "lr": 0.1, "task": "shuttle-ad", "flag": True,
                   "name": "a b"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_args(["oops"])


def test_config_file_top_level_or_flower_table(tmp_path):
    a = tmp_path / "a.toml"
    a.write_text('task = "digits"\nnum-clients = 4\n')
    b = tmp_path / "b.toml"
    b.write_text('[tool.flwr.app.config]\ntask = "digits"\nnum-clients = 4\n')
    assert load_config_file(a) == load_config_file(b) == {"task": "digits", "num-clients": 4}
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.toml")


def test_replace_validates_and_digest_tracks_results_keys():
    cfg = parse_run_config({"task": "digits"})
    assert cfg.replace(**{"num-clients": 5}).num_clients == 5
    with pytest.raises(ConfigError):
        cfg.replace(**{"num-clients": -1})
    assert cfg.digest() == cfg.replace(**{"experiment": "other"}).digest()
    assert cfg.digest() != cfg.replace(**{"seed": 1}).digest()


def test_a_key_hashed_when_set_keeps_old_digests_at_its_default():
    """finetune-lr, feature-shift and client-model-dir came after recorded sweeps: at
    their defaults they are not in the digest, so those runs keep theirs; set, they are."""
    import hashlib
    import json

    cfg = parse_run_config({"task": "digits"})
    legacy = {k: v for k, v in cfg.to_dict().items()
              if k not in ("tracking-uri", "experiment", "mlflow-run-id", "virtual-nodes",
                           "clients-per-call", "packing",
                           "finetune-lr", "feature-shift", "client-model-dir")}
    assert cfg.digest() == hashlib.sha256(
        json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.replace(**{"finetune-lr": 0.005}).digest() != cfg.digest()
    fm = parse_run_config({"task": "fmnist"})
    assert fm.replace(**{"feature-shift": 0.5}).digest() != fm.digest()
