"""The selector protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Selector(Protocol):
    def select(self, server_round: int, candidates: Sequence[int], num: int,
               rng: np.random.Generator) -> list[int]:
        """Pick ``num`` of the ``candidates`` (partition ids) for this round, sorted."""
        ...
