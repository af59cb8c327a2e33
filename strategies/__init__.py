"""Server halves of federated algorithms, one per file.

``STRATEGIES`` maps each ``strategy=`` name to a :class:`StrategySpec`: how to build
the Flower strategy from the run config (``STRATEGIES.build(name, cfg)``) and which
client-side local update rule (in ``clients.LOCAL_UPDATES``) it pairs with.
"""

from fedpers.registry import Registry
from strategies.base import StrategySpec
from strategies.fedadam import FEDADAM
from strategies.fedavg import FEDAVG
from strategies.fedavgm import FEDAVGM
from strategies.fednova import FEDNOVA
from strategies.fedprox import FEDPROX
from strategies.fedyogi import FEDYOGI
from strategies.scaffold import SCAFFOLD

STRATEGIES: Registry[StrategySpec] = Registry("strategy", {
    "fedavg": FEDAVG,
    "fedprox": FEDPROX,
    "scaffold": SCAFFOLD,
    "fednova": FEDNOVA,
    "fedadam": FEDADAM,
    "fedyogi": FEDYOGI,
    "fedavgm": FEDAVGM,
})

__all__ = ["STRATEGIES", "StrategySpec"]
