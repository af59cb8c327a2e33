"""FedAvgM: server momentum on the averaged client update
(Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification", arXiv 1909.06335).

Flower's :class:`flwr.serverapp.strategy.FedAvgM`, stepping only the shared part
of the model from the model sent this round. ``server-lr`` is the server step
size (0 = 1.0), ``server-momentum`` the momentum. Clients run plain local SGD.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvgM

from strategies.base import TAKE_ALL, SharedPart, StrategyParams, StrategySpec, StrategyState

DEFAULT_SERVER_LR = 1.0  # Flower's FedAvgM server_learning_rate


class SharedFedAvgM(StrategyState, SharedPart, FedAvgM):
    """Flower's FedAvgM over the parameters the replies carry."""

    state_attrs = ("current_arrays", "momentum_vector")  # Flower's FedAvgM names

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays  # step from what was sent, every round
        return super().configure_train(server_round, arrays, config, grid)


def build(params: StrategyParams) -> FedAvgM:
    return SharedFedAvgM(**TAKE_ALL, server_learning_rate=params.server_lr or DEFAULT_SERVER_LR,
                         server_momentum=params.server_momentum)


FEDAVGM = StrategySpec(build=build, local_update="sgd", paper="arXiv 1909.06335")
