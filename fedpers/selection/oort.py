"""``selection=oort``: Oort's guided participant selection (Lai et al., "Oort:
Efficient Federated Learning via Guided Participant Selection", OSDI 2021,
arXiv 2010.06081), without the pacer and the blacklist.

Each round a share ``eps`` of the slots goes to *exploration* of clients never
tried (no reported loss, never timed on the clock), the rest to *exploitation* of
the others by utility:

- statistical utility ``|B_i| * loss_i``: the client's training-set size times the
  training loss it last reported. (Oort uses ``|B_i| * sqrt(mean of squared
  per-sample losses)``; clients here report the mean loss, a lower bound of that
  root mean square.) A client that was timed but never delivered a loss (it missed
  the deadline) gets the mean reported loss, and its measured duration penalises it
  below. Clipped at its 90th percentile over the candidates, then scaled to [0, 1];
- plus a staleness bonus ``sqrt(0.1 * ln(round) / last_round_i)``, which grows for
  clients not selected for a long time;
- times a system penalty ``(T / t_i) ** alpha`` for a client whose round time
  ``t_i`` (its last simulated duration, else its predicted one) exceeds the
  preferred round duration ``T``: ``round-deadline`` when set, else the 30th
  percentile of the candidates' round times. Without a device profile there are
  no round times and no penalty.

Exploitation keeps the clients whose utility is at least 95% of the ``k``-th
highest and samples ``k`` of them with probability proportional to utility.
Exploration samples unseen clients with probability proportional to their data
size times the same system penalty (fast, data-rich clients first). ``eps`` starts
at 0.9 and decays by 0.98 per round to 0.3. These constants are the defaults of
Oort's and FedScale's code (``exploration_factor``, ``exploration_decay``,
``exploration_min``, ``round_penalty`` 2, ``round_threshold`` 30, ``clip_bound``
0.9, 95% cut-off).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedpers.selection.base import ClientStats, SelectionParams


@dataclass(frozen=True)
class OortSelector:
    preferred_s: float = 0.0  # T; 0 = the 30th percentile of the candidates' round times
    alpha: float = 2.0  # straggler penalty exponent
    explore_start: float = 0.9
    explore_decay: float = 0.98
    explore_min: float = 0.3
    cutoff: float = 0.95
    clip_quantile: float = 0.9
    preferred_percentile: float = 30.0

    def build(self, params: SelectionParams) -> OortSelector:
        return replace(self, preferred_s=params.round_deadline)

    # ------------------------------------------------------------ pieces
    def explore_share(self, server_round: int) -> float:
        return max(self.explore_min, self.explore_start * self.explore_decay ** server_round)

    @staticmethod
    def round_time(stats: ClientStats, p: int) -> float | None:
        rec = stats.get(p)
        return rec.last_duration_s if rec.last_duration_s is not None else rec.expected_s

    def preferred(self, stats: ClientStats, pool: Sequence[int]) -> float | None:
        if self.preferred_s > 0:
            return self.preferred_s
        times = [t for t in (self.round_time(stats, p) for p in pool) if t is not None]
        return float(np.percentile(times, self.preferred_percentile)) if times else None

    def penalty(self, t: float | None, preferred: float | None) -> float:
        if t is None or preferred is None or t <= preferred:
            return 1.0
        return (preferred / t) ** self.alpha

    def utilities(self, server_round: int, explored: Sequence[int], stats: ClientStats,
                  preferred: float | None) -> dict[int, float]:
        """Oort's utility of each explored client (statistical + staleness, penalised)."""
        if not explored:
            return {}
        mean = stats.mean_loss()
        losses = [stats.get(p).last_loss for p in explored]
        raw = np.array([max(stats.get(p).num_examples, 1)
                        * (loss if loss is not None else mean if mean is not None else 1.0)
                        for p, loss in zip(explored, losses, strict=True)], dtype=float)
        raw = np.minimum(raw, np.quantile(raw, self.clip_quantile))
        span = raw.max() - raw.min()
        scaled = (raw - raw.min()) / span if span > 0 else np.zeros_like(raw)
        out = {}
        for p, s in zip(explored, scaled, strict=True):
            last = max(stats.get(p).last_round, 1)
            bonus = math.sqrt(0.1 * math.log(max(server_round, 1)) / last)
            out[p] = (float(s) + bonus) * self.penalty(self.round_time(stats, p), preferred)
        return out

    # ------------------------------------------------------------ selection
    def select(self, server_round: int, candidates: Sequence[int], num: int,
               rng: np.random.Generator, stats: ClientStats | None = None) -> list[int]:
        stats = stats or ClientStats()
        pool = sorted(int(p) for p in candidates)
        num = max(0, min(num, len(pool)))
        explored = [p for p in pool if stats.tried(p)]
        unexplored = [p for p in pool if not stats.tried(p)]
        n_exploit = min(len(explored), int(num * (1.0 - self.explore_share(server_round))))
        n_explore = min(len(unexplored), num - n_exploit)
        n_exploit = min(len(explored), num - n_explore)  # fill up when few are unseen
        preferred = self.preferred(stats, pool)

        util = self.utilities(server_round, explored, stats, preferred)
        picked: list[int] = []
        if n_exploit > 0:
            ranked = sorted(explored, key=lambda p: (-util[p], p))
            bar = self.cutoff * util[ranked[n_exploit - 1]]
            eligible = [p for p in ranked if util[p] >= bar]
            picked += _weighted_sample(eligible, [util[p] for p in eligible], n_exploit, rng)
        if n_explore > 0:
            weights = [max(stats.get(p).num_examples, 1)
                       * self.penalty(self.round_time(stats, p), preferred) for p in unexplored]
            picked += _weighted_sample(unexplored, weights, n_explore, rng)
        return sorted(picked)


def _weighted_sample(items: Sequence[int], weights: Sequence[float], k: int,
                     rng: np.random.Generator) -> list[int]:
    """``k`` of ``items`` without replacement, with probability proportional to weight."""
    w = np.asarray(weights, dtype=float) + 1e-12  # zero weights stay possible, barely
    idx = rng.choice(len(items), size=k, replace=False, p=w / w.sum())
    return [int(items[i]) for i in idx]
