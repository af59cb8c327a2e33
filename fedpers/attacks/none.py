"""``none``: an honest client (the default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedpers.attacks.base import AttackParams


@dataclass(frozen=True)
class NoAttack:
    name: str = "none"
    poisons_labels: bool = False

    @classmethod
    def build(cls, params: AttackParams) -> NoAttack:
        return cls()

    def update(self, update: dict[str, np.ndarray], rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
        return update

    def labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        return y
