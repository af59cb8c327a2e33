"""Systems heterogeneity: a seeded straggler profile cuts local work in one place."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_helpers import local_context, one_weight

from clients import LOCAL_UPDATES
from clients.base import TrainingParams
from clients.local_training import full_steps, straggler_steps, stragglers
from fedpers.config import ConfigError, config_keys, parse_run_config


def training(values: dict) -> TrainingParams:
    return TrainingParams.from_config(parse_run_config(values))


def test_the_share_of_stragglers_is_exact_and_depends_only_on_the_seed():
    cfg = {"num-clients": 20, "straggler-fraction": 0.5, "seed": 3}
    chosen = stragglers(training(cfg))
    assert len(chosen) == 10 and chosen <= set(range(20))
    assert stragglers(training({**cfg, "num-server-rounds": 99})) == chosen
    others = {stragglers(training({**cfg, "seed": s})) for s in range(5)}
    assert len(others) > 1
    assert stragglers(training({"num-clients": 20})) == frozenset()


def test_budget_is_the_share_of_full_local_work():
    values = {"num-clients": 4, "straggler-fraction": 0.5, "straggler-work": 0.3,
              "local-epochs": 2, "batch-size": 10}
    cfg = training(values)
    assert full_steps(cfg, 95) == 20
    slow = sorted(stragglers(cfg))
    fast = sorted(set(range(4)) - set(slow))
    assert [straggler_steps(cfg, p, 95) for p in slow] == [6, 6]
    assert [straggler_steps(cfg, p, 95) for p in fast] == [None, None]
    tiny = training({**values, "straggler-work": 0.01})
    assert straggler_steps(tiny, slow[0], 5) == 1  # at least one step


@pytest.mark.parametrize("rule", ["sgd", "proximal", "scaffold"])
def test_every_local_update_rule_honours_the_budget(rule):
    x = np.ones((8, 1), np.float32)
    cfg = {"num-clients": 2, "straggler-fraction": 0.5, "straggler-work": 0.5,
           "local-epochs": 2, "batch-size": 2, "lr": 0.01}
    slow = next(iter(stragglers(training(cfg))))
    steps = {}
    for pid in (0, 1):
        lc = local_context(x=x, partition_id=pid, server_config={"proximal-mu": 0.1},
                           server_arrays={"control": {"weight": np.zeros((1, 1), np.float32)}},
                           **cfg)
        steps[pid] = LOCAL_UPDATES[rule].train(one_weight(2.0), lc).steps
    assert steps[slow] == 4 and steps[1 - slow] == 8


def test_new_keys_are_declared_and_checked():
    keys = config_keys()
    assert (keys["proximal-mu"], keys["server-lr"], keys["server-momentum"],
            keys["straggler-fraction"], keys["straggler-work"]) == (0.01, 0.0, 0.9, 0.0, 0.5)
    for raw, key in [({"proximal-mu": -1.0}, "proximal-mu"), ({"server-lr": -0.1}, "server-lr"),
                     ({"server-momentum": 1.0}, "server-momentum"),
                     ({"straggler-fraction": 1.5}, "straggler-fraction"),
                     ({"straggler-work": 0.0}, "straggler-work")]:
        with pytest.raises(ConfigError, match=f"'{key}'"):
            parse_run_config(raw)
