"""SCAFFOLD: one round of client and server control-variate updates by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
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
from clients.scaffold import CONTROL, STATE_KEY
from fedpers.byte_count import messages_bytes
from fedpers.client_app import train
from fedpers.config import parse_run_config
from fedpers.data import TASKS
from strategies import STRATEGIES, StrategyParams

pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app

X1 = np.ones((1, 1), np.float32)  # one example, x = 1: loss (w - 1)^2, gradient 2 (w - 1)
W = "weight"  # the one parameter of strategy_helpers.one_weight


def _scaffold_context(c: float, ci: float | None, state: RecordDict | None = None):
    state = RecordDict() if state is None else state
    if ci is not None:
        state[STATE_KEY] = record({W: np.full((1, 1), ci, np.float32)})
    return local_context(x=X1, state=state,
                         server_arrays={CONTROL: {W: np.full((1, 1), c, np.float32)}},
                         **{"local-epochs": 2, "batch-size": 1, "lr": 0.1})


def test_client_update_matches_a_hand_computation():
    # w0 = x = 3, lr = 0.1, c = 0.5, c_i = 0.2: every gradient gets c - c_i = 0.3
    #   step 1: g = 2(3 - 1) + 0.3     = 4.3   -> w = 3    - 0.43  = 2.57
    #   step 2: g = 2(2.57 - 1) + 0.3  = 3.44  -> w = 2.57 - 0.344 = 2.226
    # option II, K = 2: c_i+ = c_i - c + (x - y)/(K lr) = 0.2 - 0.5 + 0.774/0.2 = 3.57
    lc = _scaffold_context(c=0.5, ci=0.2)
    model = one_weight(3.0)
    result = LOCAL_UPDATES["scaffold"].train(model, lc)
    assert result.steps == 2
    assert weight(model) == pytest.approx(2.226, abs=1e-5)
    assert float(numpy(lc.state[STATE_KEY])[W][0, 0]) == pytest.approx(3.57, abs=1e-4)
    assert float(lc.reply_arrays[CONTROL][W][0, 0]) == pytest.approx(3.57 - 0.2, abs=1e-4)


def test_a_client_without_state_starts_from_zero():
    # c = c_i = 0: plain SGD, 3 -> 2.6 -> 2.28; c_i+ = (3 - 2.28)/0.2 = 3.6
    lc = _scaffold_context(c=0.0, ci=None)
    model = one_weight(3.0)
    LOCAL_UPDATES["scaffold"].train(model, lc)
    assert weight(model) == pytest.approx(2.28, abs=1e-6)
    assert float(lc.reply_arrays[CONTROL][W][0, 0]) == pytest.approx(3.6, abs=1e-4)


def test_stragglers_normalise_by_the_steps_they_took():
    # straggler-work 0.5 of 2 steps = 1 step: 3 -> 2.6, c_i+ = 0.4/(1 * 0.1) = 4
    lc = local_context(x=X1, server_arrays={CONTROL: {W: np.zeros((1, 1), np.float32)}},
                       **{"local-epochs": 2, "batch-size": 1, "lr": 0.1, "num-clients": 1,
                          "straggler-fraction": 1.0, "straggler-work": 0.5})
    model = one_weight(3.0)
    assert LOCAL_UPDATES["scaffold"].train(model, lc).steps == 1
    assert float(lc.reply_arrays[CONTROL][W][0, 0]) == pytest.approx(4.0, abs=1e-4)


def test_the_scaffold_update_needs_the_server_control_variate():
    with pytest.raises(ValueError, match="control"):
        LOCAL_UPDATES["scaffold"].train(one_weight(1.0), local_context(x=X1))


def test_server_update_matches_a_hand_computation():
    # N = 4 clients, 2 selected, server-lr 0.5, x = [1, 2], c = 0
    #   y_1 = [2, 2] (1 example), y_2 = [4, 6] (3 examples): weighted mean [3.5, 5]
    #   x+ = x + 0.5 ([3.5, 5] - [1, 2]) = [2.25, 3.5]
    #   c+ = c + (1/4)(Δc_1 + Δc_2) = ([1, 0] + [3, 4]) / 4 = [1, 1]
    cfg = parse_run_config({"strategy": "scaffold", "num-clients": 4, "server-lr": 0.5})
    strategy = STRATEGIES["scaffold"].build(StrategyParams.from_config(cfg))
    x = {"w": np.array([1.0, 2.0], np.float32), "steps": np.array([0], np.int64)}
    messages = list(strategy.configure_train(1, record(x), ConfigRecord(), FakeGrid([1, 2])))
    sent_c = numpy(messages[0].content[CONTROL])
    assert set(sent_c) == {"w"}  # float arrays only
    np.testing.assert_array_equal(sent_c["w"], [0.0, 0.0])
    replies = [reply({"w": np.array([2.0, 2.0], np.float32)}, num_examples=1,
                     extra={CONTROL: {"w": np.array([1.0, 0.0], np.float32)}}),
               reply({"w": np.array([4.0, 6.0], np.float32)}, num_examples=3,
                     extra={CONTROL: {"w": np.array([3.0, 4.0], np.float32)}})]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(numpy(arrays)["w"], [2.25, 3.5])
    assert numpy(arrays)["w"].dtype == np.float32
    assert metrics is not None and metrics["train-loss"] == pytest.approx(0.5)
    x2 = {"w": numpy(arrays)["w"], "steps": x["steps"]}
    messages = list(strategy.configure_train(2, record(x2), ConfigRecord(), FakeGrid([3])))
    np.testing.assert_allclose(numpy(messages[0].content[CONTROL])["w"], [1.0, 1.0])


def test_the_control_variate_doubles_the_downlink():
    cfg = parse_run_config({"strategy": "scaffold"})
    rng = np.random.default_rng(0)  # not zeros: Flower ships identical arrays once
    x = record({"w": rng.normal(size=(64, 64)).astype(np.float32),
                "b": rng.normal(size=64).astype(np.float32)})
    sizes = {}
    for name in ("fedavg", "scaffold"):
        strategy = STRATEGIES[name].build(StrategyParams.from_config(cfg))
        sizes[name] = messages_bytes(strategy.configure_train(1, x, ConfigRecord(),
                                                              FakeGrid([1, 2, 3])))
    assert 1.95 < sizes["scaffold"] / sizes["fedavg"] < 2.05


def test_client_app_keeps_c_i_in_the_context_state_across_rounds():
    """Through the real ClientApp handler: the reply carries Δc_i, the state keeps c_i."""
    cfg = parse_run_config({"task": "digits", "num-clients": 2, "strategy": "scaffold",
                            "partition": "iid", "max-samples-per-client": 40})
    torch.manual_seed(0)
    model = TASKS["digits"].build_model((64,), 10)
    x = {k: v.numpy() for k, v in model.state_dict().items()}
    c = {k: np.zeros_like(v) for k, v in x.items()}
    context = Context(run_id=1, node_id=5, node_config={"partition-id": 1, "num-partitions": 2},
                      state=RecordDict(), run_config=cfg.to_dict())
    states = []
    for rnd in (1, 2):
        msg = Message(RecordDict({"arrays": record(x), CONTROL: record(c),
                                  "config": ConfigRecord({"server-round": rnd})}),
                      message_type=MessageType.TRAIN, dst_node_id=5)
        out = train(msg, context)
        assert set(out.content.array_records) == {"arrays", CONTROL}
        delta = numpy(out.content[CONTROL])
        assert set(delta) == set(x)
        states.append(numpy(context.state[STATE_KEY]))
    # round 2 started from round 1's c_i: c_i(2) = c_i(1) + Δc_i(2)
    for k in x:
        np.testing.assert_allclose(states[1][k], states[0][k] + delta[k], rtol=1e-5,
                                   atol=1e-6)
