"""Server halves of federated algorithms, one per file.

``STRATEGIES`` maps each ``strategy=`` name to a :class:`StrategySpec`: how to build
the Flower strategy from the strategy's own keys (:class:`StrategyParams`) and which
client-side local update rule (in ``clients.LOCAL_UPDATES``) it pairs with.
:func:`build_strategy` builds the strategy a run config names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.serverapp.strategy import Strategy

from fedpers.registry import Registry
from strategies.base import StrategyParams, StrategySpec
from strategies.fedadam import FEDADAM
from strategies.fedavg import FEDAVG
from strategies.fedavgm import FEDAVGM
from strategies.fednova import FEDNOVA
from strategies.fedprox import FEDPROX
from strategies.fedyogi import FEDYOGI
from strategies.scaffold import SCAFFOLD

if TYPE_CHECKING:
    from fedpers.config import RunConfig

STRATEGIES: Registry[StrategySpec] = Registry("strategy", {
    "fedavg": FEDAVG,
    "fedprox": FEDPROX,
    "scaffold": SCAFFOLD,
    "fednova": FEDNOVA,
    "fedadam": FEDADAM,
    "fedyogi": FEDYOGI,
    "fedavgm": FEDAVGM,
})



def build_strategy(cfg: RunConfig) -> Strategy:
    """The Flower strategy ``cfg.strategy`` names, built from its keys alone."""
    return STRATEGIES.build(cfg.strategy, StrategyParams.from_config(cfg))


__all__ = ["STRATEGIES", "StrategyParams", "StrategySpec", "build_strategy"]
