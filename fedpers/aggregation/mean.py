"""``mean``: no robust aggregation, the strategy's own (usually example-weighted) mean.

Every reply goes on to the strategy unchanged, so ``aggregation = "mean"`` (the
default) is exactly the strategy without this layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedpers.aggregation.base import Aggregate, as_matrix

if TYPE_CHECKING:
    from fedpers.aggregation.base import AggregationParams


@dataclass(frozen=True)
class Mean:
    """Pass every update through; the strategy averages them as it always does."""

    name: str = "mean"
    selects_clients: bool = False

    @classmethod
    def build(cls, params: AggregationParams) -> Mean:
        return cls()

    def aggregate(self, updates: np.ndarray) -> Aggregate:
        return Aggregate(selected=tuple(range(as_matrix(updates).shape[0])))
