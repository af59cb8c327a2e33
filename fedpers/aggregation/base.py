"""What a robust aggregator returns, and the protocol every one implements.

An aggregator sees one round's client updates as the rows of a matrix ``U``
(``n`` clients x ``d`` coordinates: the flattened floating-point part of
``client model - global model`` over the shared parameters) and returns an
:class:`Aggregate`: which rows the strategy goes on to aggregate, and, for
coordinate-wise aggregators, the one robust update that replaces every one of
them. Pure numpy: no Flower, no torch, no config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedpers.registry import Params


@dataclass(frozen=True)
class AggregationParams(Params):
    """The run-config keys of the robust aggregation rules.

    Attributes
    ----------
    aggregation : str
        ``aggregation``: the rule's name.
    trim_fraction : float
        ``trim-fraction``: share trimmed-mean drops from each side.
    krum_f : int
        ``krum-f``: Byzantine clients Krum and Multi-Krum assume.
    multi_krum_m : int
        ``multi-krum-m``: updates Multi-Krum keeps (0 = n - f).
    """

    aggregation: str
    trim_fraction: float
    krum_f: int
    multi_krum_m: int


@dataclass(frozen=True)
class Aggregate:
    """The outcome of one robust aggregation.

    Attributes
    ----------
    selected : tuple of int
        Rows of ``U`` (in increasing order) whose replies the strategy aggregates.
    update : numpy.ndarray or None
        ``None``: the selected replies go on as they are. Otherwise a vector of
        length ``d`` that replaces the update of every selected reply.
    """

    selected: tuple[int, ...]
    update: np.ndarray | None = None


class Aggregator(Protocol):
    """A robust aggregation rule (``aggregation=``)."""

    name: str
    # True: the rule picks clients (Krum); False: it keeps every client and may
    # replace their updates by one robust update (mean, median, trimmed mean)
    selects_clients: bool

    def aggregate(self, updates: np.ndarray) -> Aggregate:
        """Aggregate the rows of ``updates`` (shape ``(n, d)``, ``n >= 1``)."""
        ...


def as_matrix(updates: np.ndarray) -> np.ndarray:
    """``updates`` as a 2-D float64 array with at least one row (ValueError otherwise)."""
    u = np.asarray(updates, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] < 1:
        raise ValueError(f"expected a (clients, coordinates) matrix with at least one row, "
                         f"got shape {u.shape}")
    return u
