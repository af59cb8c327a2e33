"""SCAFFOLD: control variates that correct client drift (Karimireddy et al.,
"SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
arXiv 1910.06378, Algorithm 1).

The server keeps the control variate ``c`` (zeros at first, one array per shared
floating-point parameter) and sends it with the model as the ArrayRecord
``"control"`` of every train message. Each selected client replies with its
model ``y_i`` and ``Δc_i`` (``clients/scaffold.py``); the server then steps

    x <- x + server_lr * sum_i w_i (y_i - x)     w_i = num-examples share, as FedAvg
    c <- c + (1 / N) * sum_i Δc_i                 N = num-clients: |S|/N * mean(Δc_i)

The model step weights clients by their number of examples, as FedAvg and the
NIID-Bench reproduction do (the paper's uniform mean is the equal-size case).
Sending ``c`` and returning ``Δc_i`` doubles the traffic both ways; the round loop
counts it like any other content.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedpers.arrays import record_to_numpy, to_array_record
from strategies.base import TAKE_ALL, StrategyParams, StrategySpec, StrategyState

CONTROL = "control"  # same name as in clients/scaffold.py
DEFAULT_SERVER_LR = 1.0


class Scaffold(StrategyState, FedAvg):
    """FedAvg's sampling and weighting plus the server half of SCAFFOLD.

    Parameters
    ----------
    num_clients : int
        ``N``, every client there is (not only those sampled): ``c`` moves by
        ``|S|/N`` of the mean control update.
    server_lr : float
        Global step size ``eta_g`` (1.0 = the averaged client model).
    """

    state_attrs = ("control", "current")

    def __init__(self, *, num_clients: int, server_lr: float = DEFAULT_SERVER_LR,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        self.num_clients = num_clients
        self.server_lr = server_lr
        self.current: dict[str, np.ndarray] | None = None
        self.control: dict[str, np.ndarray] | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current = record_to_numpy(arrays)
        if self.control is None:  # until replies show which names are shared: every float
            self.control = {k: np.zeros_like(v) for k, v in self.current.items()
                            if v.dtype.kind == "f"}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = ArrayRecord({k: Array(v) for k, v in self.control.items()})
        for msg in messages:
            msg.content[CONTROL] = control
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Step ``x`` and ``c``. The ``"control"`` records are taken out of the replies."""
        replies = [r for r in replies if not r.has_error()]
        deltas = []
        for msg in replies:
            deltas.append(record_to_numpy(msg.content.array_records[CONTROL]))
            msg.content = RecordDict({k: v for k, v in msg.content.items() if k != CONTROL})
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None or self.current is None or self.control is None:
            return averaged, metrics
        x = self.current
        new_x = {k: (x[k] + self.server_lr * (y - x[k])).astype(x[k].dtype, copy=False)
                 for k, y in record_to_numpy(averaged).items()}
        names = [k for k in deltas[0] if k in self.control and all(k in d for d in deltas)]
        self.control = {k: (self.control[k] + sum(d[k] for d in deltas) / self.num_clients)
                        .astype(self.control[k].dtype, copy=False) for k in names}
        return to_array_record(new_x), metrics


def build(params: StrategyParams) -> Scaffold:
    return Scaffold(**TAKE_ALL, num_clients=params.num_clients,
                    server_lr=params.server_lr or DEFAULT_SERVER_LR)


SCAFFOLD = StrategySpec(build=build, local_update="scaffold", paper="arXiv 1910.06378",
                        extra_records=(CONTROL,))
