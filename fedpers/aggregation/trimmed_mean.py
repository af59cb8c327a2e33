"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018, arXiv 1803.01498).

For each coordinate, sort the ``n`` client values, drop the ``k = floor(beta n)``
largest and the ``k`` smallest, and average the remaining ``n - 2k``
(unweighted). ``beta`` is ``trim-fraction``, the share trimmed from *each* side;
it tolerates up to ``k`` arbitrary clients. When ``2k >= n`` (too few clients in a
round) ``k`` is lowered to ``(n - 1) // 2``, which leaves the median's one or two
middle values. ``beta = 0`` is the plain unweighted mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedpers.aggregation.base import Aggregate, as_matrix

if TYPE_CHECKING:
    from fedpers.aggregation.base import AggregationParams


def trimmed_count(n: int, beta: float) -> int:
    """Values trimmed from each side of each coordinate for ``n`` clients."""
    return min(int(math.floor(beta * n)), (n - 1) // 2)


@dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise ``beta``-trimmed mean; replaces every client's update.

    Parameters
    ----------
    beta : float
        Share of the clients trimmed from each side, in ``[0, 0.5)``.
    """

    beta: float = 0.1
    name: str = "trimmed-mean"
    selects_clients: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 0.5:
            raise ValueError(f"trimmed mean: beta must be in [0, 0.5), got {self.beta}")

    @classmethod
    def build(cls, params: AggregationParams) -> TrimmedMean:
        return cls(beta=params.trim_fraction)

    def aggregate(self, updates: np.ndarray) -> Aggregate:
        u = as_matrix(updates)
        n = u.shape[0]
        k = trimmed_count(n, self.beta)
        kept = np.sort(u, axis=0)[k:n - k]
        return Aggregate(selected=tuple(range(n)), update=kept.mean(axis=0))
