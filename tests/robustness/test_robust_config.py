"""Config validation of the issue-8 keys: bad values and unsound combinations fail
at parse time, naming the keys."""

from __future__ import annotations

import pytest

from fedpers.config import ConfigError, config_keys, parse_run_config


def test_defaults_change_nothing():
    keys = config_keys()
    assert keys["aggregation"] == "mean" and keys["clip-update-norm"] == 0.0
    assert keys["attack"] == "none" and keys["attack-fraction"] == 0.0
    assert keys["max-update-norm"] == 1000.0


@pytest.mark.parametrize("raw, fragments", [
    ({"aggregation": "avg"}, ["'aggregation': unknown name 'avg'", "krum, mean, median"]),
    ({"attack": "evil"}, ["'attack': unknown name 'evil'", "label-flip"]),
    ({"trim-fraction": 0.5}, ["'trim-fraction' = 0.5: must be in [0, 0.5)"]),
    ({"krum-f": -1}, ["'krum-f' = -1: must be >= 0"]),
    ({"clip-update-norm": -1.0}, ["'clip-update-norm' = -1.0: must be >= 0"]),
    ({"max-update-norm": -5.0}, ["'max-update-norm' = -5.0"]),
    ({"attack-fraction": 1.5}, ["'attack-fraction' = 1.5: must be in [0, 1]"]),
    ({"attack-scale": 0.0}, ["'attack-scale' = 0.0: must be > 0"]),
    # combinations
    ({"aggregation": "krum", "strategy": "scaffold"},
     ["'aggregation' = 'krum'", "'strategy' = 'scaffold'", "median"]),
    ({"aggregation": "multi-krum", "strategy": "scaffold"},
     ["'aggregation' = 'multi-krum'", "'strategy' = 'scaffold'"]),
    ({"clip-update-norm": 1.0, "strategy": "scaffold"},
     ["'clip-update-norm'", "'strategy' = 'scaffold'", "'median' or 'trimmed-mean'"]),
    ({"aggregation": "krum", "krum-f": 2, "num-clients": 6},
     ["'aggregation' = 'krum'", "'krum-f' = 2", "2f + 3 = 7", "gives 6"]),
    ({"aggregation": "multi-krum", "num-clients": 10, "fraction-train": 0.5,
      "multi-krum-m": 6}, ["'multi-krum-m' = 6", "5 clients per round"]),
    ({"attack-fraction": 0.2}, ["'attack-fraction' = 0.2 needs an attack"]),
    ({"attack": "sign-flip"}, ["'attack' = 'sign-flip' needs 'attack-fraction' > 0"]),
    ({"attack": "label-flip", "attack-fraction": 0.2, "task": "shuttle-ad"},
     ["'attack' = 'label-flip'", "'task' = 'shuttle-ad'"]),
])
def test_bad_robustness_config_names_the_keys(raw, fragments):
    with pytest.raises(ConfigError) as err:
        parse_run_config(raw)
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize("raw", [
    {"aggregation": "median", "strategy": "scaffold", "clip-update-norm": 5.0},
    {"aggregation": "trimmed-mean", "strategy": "scaffold"},
    {"aggregation": "krum", "strategy": "fednova", "num-clients": 5},
    {"aggregation": "multi-krum", "strategy": "fedadam", "krum-f": 2, "num-clients": 7},
    {"aggregation": "median", "strategy": "fedyogi", "clip-update-norm": 2.0},
    {"attack": "label-flip", "attack-fraction": 0.1, "task": "digits"},
    {"attack": "noise", "attack-fraction": 0.3, "codec": "q8", "error-feedback": True},
])
def test_sound_combinations_parse(raw):
    parse_run_config(raw)
