"""Client halves: local update rules and personalisation methods, one per file.

``LOCAL_UPDATES`` holds how a client trains the model it is given (a strategy's
client half, named by its ``StrategySpec.local_update``: no run-config key, so a
plain dict); ``PERSONALIZERS`` holds which parameters stay private and how the
client builds and evaluates its own model. The one ClientApp
(``fedpers.client_app``) composes one of each.
"""

from clients.apfl import APFL
from clients.base import LocalContext, LocalUpdate, Personalizer
from clients.ditto import Ditto
from clients.fedbn import FedBN
from clients.fedper import FedPer
from clients.fedrep import FedRep
from clients.finetune import FineTune
from clients.local import LocalOnly
from clients.none import NoPersonalization
from clients.proximal import ProximalUpdate
from clients.scaffold import ScaffoldUpdate
from clients.sgd import SGDUpdate
from fedpers.registry import Registry

LOCAL_UPDATES: dict[str, LocalUpdate] = {
    "sgd": SGDUpdate(),
    "proximal": ProximalUpdate(),
    "scaffold": ScaffoldUpdate(),
}

# Personalisers take no parameters at construction (they read their keys from the
# LocalContext's ``personal`` params when they run): entries are used through
# PERSONALIZERS.get.
PERSONALIZERS: Registry[Personalizer] = Registry("personalization", {
    "none": NoPersonalization(),
    "local": LocalOnly(),
    "finetune": FineTune(),
    "fedper": FedPer(),
    "fedrep": FedRep(),
    "fedbn": FedBN(),
    "ditto": Ditto(),
    "apfl": APFL(),
})

__all__ = ["LOCAL_UPDATES", "PERSONALIZERS", "LocalContext", "LocalUpdate", "Personalizer"]
