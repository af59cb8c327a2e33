"""FedProx: FedAvg plus a proximal term in each client's local objective
(Li et al., "Federated Optimization in Heterogeneous Networks", arXiv 1812.06127).

Flower's :class:`flwr.serverapp.strategy.FedProx` is the server half: it averages
like FedAvg (weighted by num-examples) and sends ``proximal-mu`` in the train
config. The client half (``clients/proximal.py``) adds ``mu * (w - w_global)`` to
every gradient. Partial work (stragglers taking fewer local steps) is averaged in
like any other update, as the paper prescribes; under a round deadline
(``round-deadline``) each client is given the local steps that fit it
(``partial_work``).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from strategies.base import TAKE_ALL, Stateless, StrategyParams, StrategySpec


class PlainFedProx(Stateless, FedProx):
    """Flower's FedProx (server half); it keeps nothing between rounds."""


def build(params: StrategyParams) -> FedProx:
    return PlainFedProx(**TAKE_ALL, proximal_mu=params.proximal_mu)


FEDPROX = StrategySpec(build=build, local_update="proximal", paper="arXiv 1812.06127",
                       partial_work=True)
