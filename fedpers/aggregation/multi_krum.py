"""Multi-Krum (Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017, Sec. 5).

Computes Krum's score of every update (``fedpers.aggregation.krum``) and keeps
the ``m`` updates with the lowest scores (ties: lower index first); the strategy
then aggregates those ``m`` as it aggregates any replies. The paper averages them
uniformly; here they are averaged by the strategy's own rule (FedAvg: weighted
by examples). ``m = 0`` (the default of ``multi-krum-m``) means ``n - f``, the
paper's choice that interpolates between Krum (``m = 1``) and the mean
(``m = n``); ``m`` is capped at ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedpers.aggregation.base import Aggregate
from fedpers.aggregation.krum import krum_scores

if TYPE_CHECKING:
    from fedpers.aggregation.base import AggregationParams


@dataclass(frozen=True)
class MultiKrum:
    """Keep the ``m`` updates with the lowest Krum scores.

    Parameters
    ----------
    f : int
        The assumed number of Byzantine clients (``krum-f``).
    m : int
        Updates kept (``multi-krum-m``); 0 = ``n - f``.
    """

    f: int = 1
    m: int = 0
    name: str = "multi-krum"
    selects_clients: bool = True

    def __post_init__(self) -> None:
        if self.f < 0 or self.m < 0:
            raise ValueError(f"multi-krum: f and m must be >= 0, got f={self.f}, m={self.m}")

    @classmethod
    def build(cls, params: AggregationParams) -> MultiKrum:
        return cls(f=params.krum_f, m=params.multi_krum_m)

    def kept(self, n: int) -> int:
        """How many of ``n`` updates are kept."""
        return max(1, min(n, self.m if self.m > 0 else n - self.f))

    def aggregate(self, updates: np.ndarray) -> Aggregate:
        scores = krum_scores(updates, self.f)
        order = np.argsort(scores, kind="stable")[:self.kept(len(scores))]
        return Aggregate(selected=tuple(sorted(int(i) for i in order)))
