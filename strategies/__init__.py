"""Server halves of federated algorithms, one per file.

``STRATEGIES`` maps each ``strategy=`` name to a :class:`StrategySpec`: how to build
the Flower strategy from the run config and which client-side local update rule
(in ``clients.LOCAL_UPDATES``) it pairs with.
"""

from strategies.base import StrategySpec
from strategies.fedavg import FEDAVG

STRATEGIES: dict[str, StrategySpec] = {
    "fedavg": FEDAVG,
}

__all__ = ["STRATEGIES", "StrategySpec"]
