"""Krum (Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017).

With ``n`` updates of which at most ``f`` are Byzantine, each update ``V_i`` gets
the score

    s(i) = sum of ||V_i - V_j||^2 over the n - f - 2 updates V_j closest to V_i

and Krum keeps the one update with the smallest score (ties: the lowest index).
The paper's guarantee needs ``n >= 2f + 3``; config parsing checks this for the
round size, and a round that ends up with fewer valid updates uses the
``max(1, n - f - 2)`` nearest neighbours instead (logged by the round loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedpers.aggregation.base import Aggregate, as_matrix

if TYPE_CHECKING:
    from fedpers.aggregation.base import AggregationParams


def min_clients(f: int) -> int:
    """Fewest updates for which Krum's guarantee holds with ``f`` Byzantine clients."""
    return 2 * f + 3


def pairwise_sq_distances(u: np.ndarray) -> np.ndarray:
    """``D[i, j] = ||u_i - u_j||^2`` (float64; exact zeros on the diagonal)."""
    sq = np.einsum("ij,ij->i", u, u)
    d = sq[:, None] + sq[None, :] - 2.0 * (u @ u.T)
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def krum_scores(updates: np.ndarray, f: int) -> np.ndarray:
    """Krum's score of every update (see the module docstring)."""
    u = as_matrix(updates)
    n = u.shape[0]
    if n == 1:
        return np.zeros(1)
    k = min(max(1, n - f - 2), n - 1)
    d = pairwise_sq_distances(u)
    others = np.sort(d + np.diag(np.full(n, np.inf)), axis=1)[:, :k]  # drop d(i, i)
    return others.sum(axis=1)


@dataclass(frozen=True)
class Krum:
    """Keep the single update with the lowest Krum score.

    Parameters
    ----------
    f : int
        The assumed number of Byzantine clients (``krum-f``).
    """

    f: int = 1
    name: str = "krum"
    selects_clients: bool = True

    def __post_init__(self) -> None:
        if self.f < 0:
            raise ValueError(f"krum: f must be >= 0, got {self.f}")

    @classmethod
    def build(cls, params: AggregationParams) -> Krum:
        return cls(f=params.krum_f)

    def aggregate(self, updates: np.ndarray) -> Aggregate:
        scores = krum_scores(updates, self.f)
        return Aggregate(selected=(int(np.argmin(scores)),))
