"""FedProx: the proximal gradient by hand, mu = 0 is FedAvg, partial work is accepted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from strategy_helpers import (
    FakeGrid,
    local_context,
    numpy,
    one_weight,
    record,
    reply,
    weight,
)

from clients import LOCAL_UPDATES
from clients.proximal import proximal_hook
from fedpers.config import parse_run_config
from strategies import STRATEGIES, StrategyParams

pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app

X1 = np.ones((1, 1), np.float32)  # one example, x = 1: loss (w - 1)^2, gradient 2 (w - 1)


def test_proximal_hook_adds_mu_times_distance_to_the_start():
    model = one_weight(1.0)
    hook = proximal_hook(model, mu=0.5, device=torch.device("cpu"))
    with torch.no_grad():
        model.weight.fill_(3.0)
    model.weight.grad = torch.full_like(model.weight, 0.2)
    hook(model)
    assert float(model.weight.grad) == pytest.approx(0.2 + 0.5 * (3.0 - 1.0))


def test_proximal_local_training_matches_a_hand_computation():
    # w0 = 3, lr = 0.1, mu = 0.5, two steps on x = 1:
    #   step 1: g = 2(3 - 1) + 0.5(3 - 3)       = 4.0  -> w = 3   - 0.40  = 2.6
    #   step 2: g = 2(2.6 - 1) + 0.5(2.6 - 3)   = 3.0  -> w = 2.6 - 0.30  = 2.3
    # (plain SGD: step 2 g = 3.2 -> w = 2.28)
    lc = local_context(x=X1, server_config={"proximal-mu": 0.5}, **{
        "local-epochs": 2, "batch-size": 1, "lr": 0.1})
    model = one_weight(3.0)
    result = LOCAL_UPDATES["proximal"].train(model, lc)
    assert result.steps == 2
    assert weight(model) == pytest.approx(2.3, abs=1e-6)
    plain = one_weight(3.0)
    LOCAL_UPDATES["sgd"].train(plain, lc)
    assert weight(plain) == pytest.approx(2.28, abs=1e-6)


def test_mu_zero_is_plain_local_sgd_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=40).astype(np.int64)
    cfg = {"local-epochs": 2, "batch-size": 8, "lr": 0.1, "momentum": 0.9}
    models = []
    for rule, server_config in (("sgd", {}), ("proximal", {"proximal-mu": 0.0})):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(),
                                    torch.nn.Linear(4, 3))
        lc = local_context(x=x, y=y, kind="classification", server_config=server_config,
                           seed=7, **cfg)
        LOCAL_UPDATES[rule].train(model, lc)
        models.append(model.state_dict())
    for k in models[0]:
        assert torch.equal(models[0][k], models[1][k]), k


def test_the_proximal_update_needs_mu_from_the_server():
    with pytest.raises(ValueError, match="proximal-mu"):
        LOCAL_UPDATES["proximal"].train(one_weight(1.0), local_context(x=X1))


def test_server_sends_mu_and_averages_partial_work_like_fedavg():
    cfg = parse_run_config({"strategy": "fedprox", "proximal-mu": 0.1})
    strategy = STRATEGIES["fedprox"].build(StrategyParams.from_config(cfg))
    x = {"w": np.zeros(2, np.float32)}
    messages = list(strategy.configure_train(1, record(x), ConfigRecord(), FakeGrid([1, 2])))
    assert [m.content["config"]["proximal-mu"] for m in messages] == [0.1, 0.1]
    # a straggler that took 3 of 10 steps counts by its examples, as in FedAvg
    replies = [reply({"w": np.array([1.0, 1.0], np.float32)}, num_examples=3, steps=3),
               reply({"w": np.array([5.0, 9.0], np.float32)}, num_examples=1, steps=10)]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(numpy(arrays)["w"], [2.0, 3.0])
