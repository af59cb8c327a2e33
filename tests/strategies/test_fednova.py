"""FedNova: equals FedAvg at equal local steps; normalises unequal ones by hand."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.exception import AggregationError
from strategy_helpers import (
    FakeGrid,
    numpy,
    record,
    reply,
)

from fedpers.config import parse_run_config
from fedpers.training import effective_steps
from strategies import STRATEGIES

pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app


def _aggregate(name: str, x: dict, replies: list, **cfg) -> dict[str, np.ndarray]:
    strategy = STRATEGIES[name].build(parse_run_config({"strategy": name, **cfg}))
    list(strategy.configure_train(1, record(x), ConfigRecord(), FakeGrid([1, 2, 3])))
    arrays, _ = strategy.aggregate_train(1, replies)
    return numpy(arrays)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_equal_steps_is_fedavg(momentum):
    rng = np.random.default_rng(0)
    x = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}

    def replies():
        r = np.random.default_rng(1)
        return [reply({k: (v + r.normal(size=v.shape)).astype(np.float32)
                       for k, v in x.items()}, num_examples=n, steps=7) for n in (5, 20, 75)]

    nova = _aggregate("fednova", x, replies(), momentum=momentum)
    avg = _aggregate("fedavg", x, replies(), momentum=momentum)
    assert nova.keys() == avg.keys()
    for k in avg:
        np.testing.assert_allclose(nova[k], avg[k], rtol=1e-5, atol=1e-6)


def test_unequal_steps_by_hand():
    # x = 0; y_1 = -2 after 2 steps, y_2 = -4 after 8 steps, equal examples (p = 1/2):
    #   d_1 = 2/2 = 1, d_2 = 4/8 = 0.5, tau_eff = (2 + 8)/2 = 5
    #   x+ = 0 - 5 (0.5 * 1 + 0.5 * 0.5) = -3.75   (FedAvg: -3)
    x = {"w": np.zeros(1, np.float32)}
    replies = [reply({"w": np.array([-2.0], np.float32)}, num_examples=10, steps=2),
               reply({"w": np.array([-4.0], np.float32)}, num_examples=10, steps=8)]
    got = _aggregate("fednova", x, replies)
    np.testing.assert_allclose(got["w"], [-3.75])
    assert got["w"].dtype == np.float32


def test_server_lr_scales_the_step():
    x = {"w": np.zeros(1, np.float32)}
    replies = [reply({"w": np.array([-2.0], np.float32)}, num_examples=10, steps=2),
               reply({"w": np.array([-4.0], np.float32)}, num_examples=10, steps=8)]
    np.testing.assert_allclose(_aggregate("fednova", x, replies, **{"server-lr": 0.5})["w"],
                               [-1.875])


def test_effective_steps_with_momentum():
    assert effective_steps(5, 0.0) == 5
    # rho = 0.5: 1 + 1.5 + 1.75
    assert effective_steps(3, 0.5) == pytest.approx(4.25)


def test_a_reply_without_steps_is_an_error():
    x = {"w": np.zeros(1, np.float32)}
    bad = reply({"w": np.ones(1, np.float32)}, steps=0)
    with pytest.raises(AggregationError, match="steps"):
        _aggregate("fednova", x, [bad])
