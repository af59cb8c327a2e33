"""Tiny models, local contexts, grids and replies for the strategy tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from torch import nn

from clients import LocalContext
from fedpers.config import parse_run_config
from fedpers.data.base import ClientData


def one_weight(w: float) -> nn.Module:
    """``f(x) = w * x``: with ``kind="anomaly"`` the loss on x = 1 is (w - 1)^2."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(w)
    return model


def weight(model: nn.Module) -> float:
    return float(model.weight.detach().reshape(-1)[0])


def local_context(*, x: np.ndarray, y: np.ndarray | None = None, kind: str = "anomaly",
                  server_config: dict[str, Any] | None = None,
                  server_arrays: dict[str, dict[str, np.ndarray]] | None = None,
                  state: RecordDict | None = None, partition_id: int = 0, seed: int = 0,
                  **cfg: Any) -> LocalContext:
    y = np.zeros(len(x), np.int64) if y is None else y
    data = ClientData(x_train=x, y_train=y, x_test=x[:1], y_test=y[:1])
    return LocalContext.from_config(parse_run_config({"momentum": 0.0, **cfg}), data=data,
                                    kind=kind, server_round=1, partition_id=partition_id,
                                    seed=seed, device=torch.device("cpu"),
                                    state=RecordDict() if state is None else state,
                                    server_config=server_config or {},
                                    server_arrays=server_arrays or {})


class FakeGrid:
    """Just enough Grid for ``configure_train``: the nodes it shows."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def numpy(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in rec.items()}


def reply(arrays: dict[str, np.ndarray], num_examples: int = 1, steps: int = 1,
          extra: dict[str, dict[str, np.ndarray]] | None = None) -> Message:
    """A training reply as the round loop hands it to the strategy (``clean_reply``)."""
    ins = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=7)
    content = {"arrays": record(arrays),
               "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 0.5,
                                        "steps": steps, "partition-id": 0}),
               **{name: record(a) for name, a in (extra or {}).items()}}
    return Message(RecordDict(content), reply_to=ins)
