"""FedAdam: Adam on the server, applied to the averaged client update
(Reddi et al., "Adaptive Federated Optimization", arXiv 2003.00295).

Flower's :class:`flwr.serverapp.strategy.FedAdam`, stepping only the shared part
of the model. ``server-lr`` is Adam's step size (0 = Flower's default 0.1),
``server-momentum`` its ``beta_1``; ``beta_2`` and ``tau`` keep Flower's defaults.
Clients run plain local SGD.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam

from strategies.base import TAKE_ALL, SharedPart, StrategyParams, StrategySpec, StrategyState

DEFAULT_SERVER_LR = 0.1  # Flower's FedAdam eta


class SharedFedAdam(StrategyState, SharedPart, FedAdam):
    """Flower's FedAdam over the parameters the replies carry."""

    state_attrs = ("current_arrays", "m_t", "v_t")  # Flower's FedOpt / FedAdam names


def build(params: StrategyParams) -> FedAdam:
    return SharedFedAdam(**TAKE_ALL, eta=params.server_lr or DEFAULT_SERVER_LR, eta_l=params.lr,
                         beta_1=params.server_momentum)


FEDADAM = StrategySpec(build=build, local_update="sgd", paper="arXiv 2003.00295")
