"""FedYogi: Yogi on the server, applied to the averaged client update
(Reddi et al., "Adaptive Federated Optimization", arXiv 2003.00295).

Flower's :class:`flwr.serverapp.strategy.FedYogi`, stepping only the shared part
of the model. ``server-lr`` is Yogi's step size (0 = Flower's default 0.01),
``server-momentum`` its ``beta_1``; ``beta_2`` and ``tau`` keep Flower's defaults.
Clients run plain local SGD.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedYogi

from strategies.base import TAKE_ALL, SharedPart, StrategyParams, StrategySpec, StrategyState

DEFAULT_SERVER_LR = 0.01  # Flower's FedYogi eta


class SharedFedYogi(StrategyState, SharedPart, FedYogi):
    """Flower's FedYogi over the parameters the replies carry."""

    state_attrs = ("current_arrays", "m_t", "v_t")  # Flower's FedOpt / FedYogi names


def build(params: StrategyParams) -> FedYogi:
    return SharedFedYogi(**TAKE_ALL, eta=params.server_lr or DEFAULT_SERVER_LR, eta_l=params.lr,
                         beta_1=params.server_momentum)


FEDYOGI = StrategySpec(build=build, local_update="sgd", paper="arXiv 2003.00295")
