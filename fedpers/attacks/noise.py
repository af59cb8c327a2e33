"""Random noise: the attacker sends a random direction instead of its update.

The "Gaussian" Byzantine worker of Blanchard et al. (NeurIPS 2017) and Xie et al.
(arXiv 1802.10116), scaled to the attacker's own update so that it is neither
trivially huge nor negligible: ``u -> s * ||u|| * g / ||g||`` with ``g ~ N(0, I)``
over all shared floating-point tensors together and ``s`` = ``attack-scale``. The
draw is seeded by the run seed, the round and the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedpers.attacks.base import global_norm

if TYPE_CHECKING:
    from fedpers.attacks.base import AttackParams


@dataclass(frozen=True)
class Noise:
    """``u -> scale * ||u|| * g / ||g||``, ``g`` standard normal."""

    scale: float = 1.0
    name: str = "noise"
    poisons_labels: bool = False

    @classmethod
    def build(cls, params: AttackParams) -> Noise:
        return cls(scale=params.attack_scale)

    def update(self, update: dict[str, np.ndarray], rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
        g = {k: rng.standard_normal(v.shape) for k, v in update.items()}
        g_norm = global_norm(g)
        factor = self.scale * global_norm(update) / g_norm if g_norm > 0 else 0.0
        return {k: (factor * g[k]).astype(v.dtype) for k, v in update.items()}

    def labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        return y
