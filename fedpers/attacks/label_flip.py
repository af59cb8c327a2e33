"""Label flipping: the attacker trains honestly on wrong labels ``y -> C - 1 - y``.

A data-poisoning attack (Biggio et al., arXiv 1206.6389; in federated learning
Tolpegin et al., "Data Poisoning Attacks Against Federated Learning Systems",
arXiv 2007.08432): the update it sends is a genuine SGD update, of a model
trained towards the wrong classes, so it is far harder to tell from an honest
one than a flipped or scaled update. Classification tasks only; the attacker
still evaluates on its true test labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedpers.attacks.base import AttackParams


@dataclass(frozen=True)
class LabelFlip:
    """Train on ``num_classes - 1 - y``; the update itself is left alone."""

    name: str = "label-flip"
    poisons_labels: bool = True

    @classmethod
    def build(cls, params: AttackParams) -> LabelFlip:
        return cls()

    def update(self, update: dict[str, np.ndarray], rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
        return update

    def labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        return (num_classes - 1 - y).astype(y.dtype, copy=False)
