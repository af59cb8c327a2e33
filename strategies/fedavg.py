"""FedAvg: weighted averaging of client models (McMahan et al., arXiv 1602.05629).

Flower's own :class:`flwr.serverapp.strategy.FedAvg` is the server half; the client
half is plain local SGD (``clients/sgd.py``).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from strategies.base import TAKE_ALL, Stateless, StrategyParams, StrategySpec


class PlainFedAvg(Stateless, FedAvg):
    """Flower's FedAvg; it keeps nothing between rounds."""


def build(params: StrategyParams) -> FedAvg:
    return PlainFedAvg(**TAKE_ALL)


FEDAVG = StrategySpec(build=build, local_update="sgd", paper="arXiv 1602.05629")
