"""``selection=uniform``: each round, a seeded uniform sample without replacement."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class UniformSelector:
    def select(self, server_round: int, candidates: Sequence[int], num: int,
               rng: np.random.Generator) -> list[int]:
        pool = np.asarray(sorted(candidates))
        num = min(num, len(pool))
        return sorted(int(c) for c in rng.choice(pool, size=num, replace=False))
