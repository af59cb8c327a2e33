"""Scaled update: the attacker sends ``s * u`` (``s`` = ``attack-scale``).

A boosted update, as in model-replacement attacks (Bagdasaryan et al., "How To
Backdoor Federated Learning", arXiv 1807.00459, which scales by about n / eta to
replace the global model). Here it is the client's honest update, boosted, so it
tests how far one client can drag the aggregate; norm clipping bounds exactly
this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedpers.attacks.base import AttackParams


@dataclass(frozen=True)
class Scale:
    """``u -> scale * u``."""

    scale: float = 10.0
    name: str = "scale"
    poisons_labels: bool = False

    @classmethod
    def build(cls, params: AttackParams) -> Scale:
        return cls(scale=params.attack_scale)

    def update(self, update: dict[str, np.ndarray], rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
        return {k: (self.scale * v).astype(v.dtype, copy=False) for k, v in update.items()}

    def labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        return y
