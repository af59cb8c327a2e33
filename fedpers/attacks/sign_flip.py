"""Sign flipping: the attacker sends ``-s * u`` instead of its update ``u``.

The "reversed gradient" attack of, e.g., Damaskinos et al. (Kardam, arXiv
1802.07928) and Li et al. (RSA, arXiv 1811.03761), with an optional boost ``s``
(``attack-scale``; ``s = 1`` is the plain flip). It pushes the mean away from the
honest clients' direction; a coordinate-wise median or Krum ignores it while
the attackers are a minority.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedpers.attacks.base import AttackParams


@dataclass(frozen=True)
class SignFlip:
    """``u -> -scale * u``."""

    scale: float = 1.0
    name: str = "sign-flip"
    poisons_labels: bool = False

    @classmethod
    def build(cls, params: AttackParams) -> SignFlip:
        return cls(scale=params.attack_scale)

    def update(self, update: dict[str, np.ndarray], rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
        return {k: (-self.scale * v).astype(v.dtype, copy=False) for k, v in update.items()}

    def labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        return y
