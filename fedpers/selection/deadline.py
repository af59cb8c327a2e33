"""``selection=deadline``: FedCS-style resource-aware selection (Nishio and Yonetani,
"Client Selection for Federated Learning with Heterogeneous Resources in Mobile
Edge", arXiv 1804.08333).

FedCS asks a random share of the clients for their resources, then greedily packs
as many as fit the round deadline. On fedpers' clock every client has its own link
(no shared channel to schedule), so the greedy packing reduces to keeping every
client whose own predicted round time fits: among those, ``num`` are taken
uniformly at random (FedCS's random resource request). A client whose predicted
time exceeds ``round-deadline``, or that has no prediction (no device profile), is
never picked; when fewer than ``num`` fit, fewer are selected.

The prediction (``ClientRecord.expected_s``, kept by the round loop) is the full
local work (``local-epochs`` epochs over the client's data) at its compute speed
plus its last measured bytes down and up over its bandwidth (before its first
round: the uncompressed model, each way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedpers.selection.base import ClientStats, SelectionParams


@dataclass(frozen=True)
class DeadlineSelector:
    deadline_s: float = 0.0  # round-deadline, simulated seconds

    def build(self, params: SelectionParams) -> DeadlineSelector:
        return replace(self, deadline_s=params.round_deadline)

    def fits(self, expected_s: float | None) -> bool:
        return expected_s is not None and expected_s <= self.deadline_s

    def select(self, server_round: int, candidates: Sequence[int], num: int,
               rng: np.random.Generator, stats: ClientStats | None = None) -> list[int]:
        if self.deadline_s <= 0:
            raise ValueError("selection 'deadline' needs round-deadline > 0")
        stats = stats or ClientStats()
        feasible = [p for p in sorted(candidates) if self.fits(stats.get(p).expected_s)]
        order = rng.permutation(len(feasible))
        return sorted(int(feasible[i]) for i in order[:max(0, num)])
