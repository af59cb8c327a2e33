"""``selection=uniform``: each round, a seeded uniform sample without replacement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedpers.selection.base import ClientStats, SelectionParams


class UniformSelector:
    stateless = True  # what it reads lives in ClientStats (fedpers.state)

    def build(self, params: SelectionParams) -> UniformSelector:
        return self

    def select(self, server_round: int, candidates: Sequence[int], num: int,
               rng: np.random.Generator, stats: ClientStats | None = None) -> list[int]:
        pool = np.asarray(sorted(candidates))
        num = min(num, len(pool))
        return sorted(int(c) for c in rng.choice(pool, size=num, replace=False))
