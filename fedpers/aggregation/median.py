"""Coordinate-wise median (Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018, arXiv 1803.01498).

Each coordinate of the aggregate is the median of that coordinate over the
clients (the mean of the two middle values when ``n`` is even), unweighted. It
tolerates fewer than half of the clients being arbitrary (breakdown point 1/2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedpers.aggregation.base import Aggregate, as_matrix

if TYPE_CHECKING:
    from fedpers.aggregation.base import AggregationParams


@dataclass(frozen=True)
class Median:
    """Coordinate-wise median of the updates; replaces every client's update."""

    name: str = "median"
    selects_clients: bool = False

    @classmethod
    def build(cls, params: AggregationParams) -> Median:
        return cls()

    def aggregate(self, updates: np.ndarray) -> Aggregate:
        u = as_matrix(updates)
        return Aggregate(selected=tuple(range(u.shape[0])), update=np.median(u, axis=0))
