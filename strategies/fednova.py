"""FedNova: normalised averaging for clients that run different numbers of local
steps (Wang et al., "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", arXiv 2007.07481).

Client ``i`` ran ``tau_i`` local steps (its reply's ``steps`` metric) from ``x``
to ``y_i``. With momentum ``rho`` its steps count as ``a_i = sum_k (1 - rho^k) /
(1 - rho)`` (``= tau_i`` for plain SGD). FedAvg weights each client's update by
``p_i`` (its share of examples), so clients that ran more steps pull the model
towards their own optimum. FedNova averages the *normalised* updates instead and
rescales by the effective number of steps:

    d_i = (x - y_i) / a_i,   tau_eff = sum_i p_i a_i,
    x <- x - server_lr * tau_eff * sum_i p_i d_i

When every client runs the same number of steps this is exactly FedAvg. Clients
run plain local SGD; nothing extra crosses the wire.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedpers.arrays import record_to_numpy, to_array_record
from fedpers.engine import AggregationError
from fedpers.training import effective_steps
from strategies.base import TAKE_ALL, StrategyParams, StrategySpec, StrategyState

STEPS_KEY = "steps"
DEFAULT_SERVER_LR = 1.0


class FedNova(StrategyState, FedAvg):
    """FedAvg's sampling and checks with FedNova's normalised aggregation.

    Parameters
    ----------
    momentum : float
        The clients' local SGD momentum (turns steps into ``a_i``).
    server_lr : float
        Global step size (1.0 = the paper's plain FedNova).
    """

    state_attrs = ("current",)

    def __init__(self, *, momentum: float = 0.0, server_lr: float = DEFAULT_SERVER_LR,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.momentum = momentum
        self.server_lr = server_lr
        self.current: dict[str, np.ndarray] | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current = record_to_numpy(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [r for r in replies if not r.has_error()]
        # FedAvg checks the replies and averages the metrics; its arrays are not used.
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None or self.current is None:
            return averaged, metrics
        weights, norms, models = [], [], []
        for msg in replies:
            m = next(iter(msg.content.metric_records.values()))
            steps = m.get(STEPS_KEY)
            if not isinstance(steps, (int, float)) or steps < 1:
                raise AggregationError(f"FedNova needs a '{STEPS_KEY}' metric >= 1 in every "
                                       f"training reply, got {steps!r}")
            weight = m[self.weighted_by_key]
            if not isinstance(weight, (int, float)):
                raise AggregationError(f"FedNova needs a number in '{self.weighted_by_key}', "
                                       f"got {weight!r}")
            weights.append(float(weight))
            norms.append(effective_steps(int(steps), self.momentum))
            models.append(record_to_numpy(msg.content.array_records[self.arrayrecord_key]))
        p = np.asarray(weights) / sum(weights)
        tau_eff = float(np.dot(p, norms))
        x = self.current
        out = {}
        for k in models[0]:
            d = sum(p_i * (x[k] - y[k]) / a_i for p_i, a_i, y in zip(p, norms, models,
                                                                    strict=True))
            out[k] = np.asarray((x[k] - self.server_lr * tau_eff * d)
                                .astype(x[k].dtype, copy=False))
        # to_array_record keeps 0-d buffers 0-d (np.ascontiguousarray makes them (1,))
        return to_array_record(out), metrics


def build(params: StrategyParams) -> FedNova:
    return FedNova(**TAKE_ALL, momentum=params.momentum,
                   server_lr=params.server_lr or DEFAULT_SERVER_LR)


FEDNOVA = StrategySpec(build=build, local_update="sgd", paper="arXiv 2007.07481",
                       normalises_steps=True)
