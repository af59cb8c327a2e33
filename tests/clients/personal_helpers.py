"""Tiny models, a BatchNorm task and handler calls for the personalisation tests."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from torch import nn

from clients import LocalContext
from fedpers.client_app import evaluate_local, train
from fedpers.config import parse_run_config
from fedpers.data import TASKS
from fedpers.data.base import ClientData
from fedpers.data.digits import DigitsTask
from strategies import STRATEGIES, StrategyParams

NODE = 5
BN_TASK = "digits-bn"


class BNMLP(nn.Module):
    """digits MLP with a BatchNorm and a LayerNorm in its body (for FedBN)."""

    head_prefixes = ("head.",)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 16),
                                  nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16),
                                  nn.LayerNorm(16), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class DigitsBN(DigitsTask):
    name = "digits-bn"

    def build_model(self, input_shape, num_classes):
        return BNMLP(input_shape, num_classes)


@pytest.fixture
def bn_task(monkeypatch):
    """Register the ``digits-bn`` task (digits data, a model with norm layers)."""
    monkeypatch.setitem(TASKS, BN_TASK, DigitsBN())
    return BN_TASK


def run_config(**overrides: Any) -> dict[str, Any]:
    """A small digits run: 2 clients, 40 samples each, batches of 10."""
    cfg = {"task": "digits-bn", "num-clients": 2, "partition": "iid",
           "max-samples-per-client": 40, "batch-size": 10, "lr": 0.1,
           "fedrep-head-epochs": 2, "finetune-epochs": 2}
    cfg.update(overrides)
    return parse_run_config(cfg).to_dict()


def context(run_cfg: dict[str, Any], state: RecordDict | None = None) -> Context:
    return Context(run_id=1, node_id=NODE, node_config={"partition-id": 1, "num-partitions": 2},
                   state=RecordDict() if state is None else state, run_config=run_cfg)


def initial_arrays(run_cfg: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    model = TASKS[run_cfg["task"]].build_model((64,), 10)
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v).reshape(np.shape(v)))
                        for k, v in arrays.items()})


def numpy(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in rec.items()}


class FakeGrid:
    def get_node_ids(self) -> list[int]:
        return [NODE]


def train_message(run_cfg: dict[str, Any], arrays: dict[str, np.ndarray],
                  rnd: int) -> Message:
    """The train message the run's strategy would send this node."""
    cfg = parse_run_config(run_cfg)
    strategy = STRATEGIES[cfg.strategy].build(StrategyParams.from_config(cfg))
    (msg,) = strategy.configure_train(rnd, record(arrays), ConfigRecord(), FakeGrid())
    return msg


def eval_message(arrays: dict[str, np.ndarray], rnd: int,
                 config: dict[str, Any] | None = None) -> Message:
    from flwr.app import MessageType

    return Message(RecordDict({"arrays": record(arrays),
                               "config": ConfigRecord({"server-round": rnd, **(config or {})})}),
                   message_type=MessageType.EVALUATE, dst_node_id=NODE)


def call_train(ctx: Context, arrays: dict[str, np.ndarray], rnd: int) -> Message:
    return train(train_message(ctx.run_config, arrays, rnd), ctx)


def call_eval(ctx: Context, arrays: dict[str, np.ndarray], rnd: int,
              config: dict[str, Any] | None = None) -> dict[str, Any]:
    return dict(evaluate_local(eval_message(arrays, rnd, config), ctx).content["metrics"])


def state_arrays(state: RecordDict) -> dict[str, dict[str, np.ndarray]]:
    return {name: numpy(rec) for name, rec in state.array_records.items()}


def copy_context(ctx: Context) -> Context:
    return context(ctx.run_config, copy.deepcopy(ctx.state))


def one_weight(w: float) -> nn.Module:
    """``f(x) = w * x``: with ``kind="anomaly"`` the loss on x = 1 is (w - 1)^2."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(w)
    return model


def weight(model: nn.Module) -> float:
    return float(model.weight.detach().reshape(-1)[0])


def local_context(*, x: np.ndarray, kind: str = "anomaly", state: RecordDict | None = None,
                  private_keys: frozenset[str] = frozenset(), partition_id: int = 0,
                  **cfg: Any) -> LocalContext:
    y = np.zeros(len(x), np.int64)
    data = ClientData(x_train=x, y_train=y, x_test=x[:1], y_test=y[:1])
    return LocalContext.from_config(parse_run_config({"momentum": 0.0, **cfg}), data=data,
                                    kind=kind, server_round=1, partition_id=partition_id,
                                    seed=0, device=torch.device("cpu"),
                                    state=RecordDict() if state is None else state,
                                    server_config={}, private_keys=private_keys)
