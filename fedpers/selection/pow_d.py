"""``selection=pow-d``: power-of-choice (Cho, Wang and Joshi, "Client Selection in
Federated Learning: Convergence Analysis and Power-of-Choice Selection Strategies",
arXiv 2010.01243).

Each round: sample ``d`` candidates uniformly without replacement (``pow-d``; 0 = twice
the round size, at least the round size), then keep the ``num`` with the highest
loss. Biasing selection towards high-loss clients speeds up convergence; ``d``
trades that bias against coverage (``d = num`` is uniform selection).

The loss of a client is the training loss it reported in its last train reply
(the paper's communication-free variant, rpow-d: no extra round trip to evaluate
the d candidates on the current model; the loss can be stale). A client never
selected ranks first: its loss is unknown, and trying it is the only way to learn
it. A client selected before that never delivered (it dropped out, missed the
deadline or failed) is ranked by the mean of the reported losses, so that it is
not retried first every round. Ties keep the random sample order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedpers.selection.base import ClientStats, SelectionParams


@dataclass(frozen=True)
class PowerOfChoice:
    d: int = 0  # candidates sampled per round; 0 = 2 x the round size

    def build(self, params: SelectionParams) -> PowerOfChoice:
        return replace(self, d=params.pow_d)

    def select(self, server_round: int, candidates: Sequence[int], num: int,
               rng: np.random.Generator, stats: ClientStats | None = None) -> list[int]:
        stats = stats or ClientStats()
        pool = np.asarray(sorted(candidates))
        num = min(num, len(pool))
        d = min(len(pool), max(num, self.d or 2 * num))
        sample = [int(p) for p in rng.choice(pool, size=d, replace=False)]

        mean = stats.mean_loss()

        def loss(p: int) -> float:
            rec = stats.get(p)
            if rec.last_loss is not None:
                return rec.last_loss
            return math.inf if rec.times_selected == 0 or mean is None else mean

        ranked = sorted(range(d), key=lambda i: (-loss(sample[i]), i))
        return sorted(sample[i] for i in ranked[:num])
