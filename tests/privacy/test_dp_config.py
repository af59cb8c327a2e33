"""Config validation of the differential-privacy keys: bad values and combinations
that break the DP-FedAvg analysis fail at parse time, naming both keys."""

from __future__ import annotations

import pytest

from fedpers.config import ConfigError, config_keys, parse_run_config

DP = {"dp": "client-clipping"}


def test_defaults_are_off():
    keys = config_keys()
    assert keys["dp"] == "none"
    assert (keys["dp-clip-norm"], keys["dp-noise-multiplier"], keys["dp-delta"]) == (
        1.0, 1.0, 1e-5)


@pytest.mark.parametrize("raw, fragments", [
    ({"dp": "local"}, ["'dp': unknown name 'local'", "client-clipping, none"]),
    ({**DP, "dp-clip-norm": 0.0}, ["'dp-clip-norm' = 0.0: must be > 0"]),
    ({**DP, "dp-noise-multiplier": 0.0}, ["'dp-noise-multiplier' = 0.0: must be > 0"]),
    ({**DP, "dp-delta": 1.0}, ["'dp-delta' = 1.0: must be in (0, 1)"]),
    ({"dp-noise-multiplier": 2.0}, ["'dp-noise-multiplier' = 2.0 needs", "client-clipping"]),
    ({**DP, "strategy": "scaffold"}, ["'dp' = 'client-clipping'", "'strategy' = 'scaffold'",
                                      "control"]),
    ({**DP, "strategy": "fednova"}, ["'dp'", "'strategy' = 'fednova'", "steps"]),
    ({**DP, "aggregation": "median"}, ["'dp'", "'aggregation' = 'mean'", "'median'"]),
    ({**DP, "aggregation": "krum", "num-clients": 10},
     ["'dp'", "'aggregation' = 'mean'", "'krum'"]),
    ({**DP, "clip-update-norm": 2.0}, ["'clip-update-norm' = 2.0", "'dp'", "dp-clip-norm"]),
    ({**DP, "selection": "pow-d"}, ["'dp'", "'selection' = 'uniform'", "'pow-d'"]),
])
def test_refused_with_a_clear_message(raw, fragments):
    with pytest.raises(ConfigError) as err:
        parse_run_config({"task": "digits", **raw})
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


@pytest.mark.parametrize("extra", [
    {"strategy": "fedadam"}, {"strategy": "fedyogi"}, {"strategy": "fedavgm"},
    {"strategy": "fedprox"}, {"codec": "q4", "error-feedback": True},
    {"codec": "topk"}, {"codec-down": "q8"}, {"personalization": "fedper"},
    {"attack": "scale", "attack-fraction": 0.25},
])
def test_sound_combinations_are_accepted(extra):
    cfg = parse_run_config({"task": "digits", **DP, **extra})
    assert cfg.dp == "client-clipping"
