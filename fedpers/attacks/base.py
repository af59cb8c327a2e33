"""The protocol of a simulated Byzantine client's attack. Pure numpy.

An attack acts on the client's *update* of the shared part, ``u = local - global``
(the global model it received), and/or on its training labels. The ClientApp
applies it before the codec encodes the upload, so attacks compose with every
codec, and never touches private (personalised) parameters, integer buffers or a
strategy's extra reply records (SCAFFOLD's control update is sent honestly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedpers.registry import Params


@dataclass(frozen=True)
class AttackParams(Params):
    """The run-config keys of the simulated attacks.

    Attributes
    ----------
    attack : str
        ``attack``: the attack's name.
    attack_fraction : float
        ``attack-fraction``: share of clients that attack.
    seed : int
        ``seed``: which clients attack, and the attacks' random draws.
    num_clients : int
        ``num-clients``: all clients (attackers are attack-fraction of them).
    attack_scale : float
        ``attack-scale``: strength s of sign-flip, scale and noise.
    """

    attack: str
    attack_fraction: float
    attack_scale: float
    seed: int
    num_clients: int


class Attack(Protocol):
    """One ``attack=`` entry."""

    name: str
    poisons_labels: bool  # True: the client trains on :meth:`labels` instead of its own

    def update(self, update: dict[str, np.ndarray], rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
        """The update the attacker sends instead of ``update`` (float tensors)."""
        ...

    def labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        """The labels the attacker trains on instead of ``y``."""
        ...


def global_norm(update: dict[str, np.ndarray]) -> float:
    """L2 norm of all tensors of ``update`` taken together (float64)."""
    return float(np.sqrt(sum(float(np.square(v, dtype=np.float64).sum())
                             for v in update.values())))
