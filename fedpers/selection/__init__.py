"""Client selection, seeded. One selector per file.

fedpers selects clients itself (by partition id, from a seeded generator) and
shows the strategy only the selected nodes, so every selector composes with
every strategy. Selectors that need to know the clients (their losses, their
simulated round times, how often they were picked) read the round loop's
:class:`ClientStats`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpers.selection.base import ClientRecord, ClientStats, Selector, jain_index
from fedpers.selection.deadline import DeadlineSelector
from fedpers.selection.oort import OortSelector
from fedpers.selection.pow_d import PowerOfChoice
from fedpers.selection.uniform import UniformSelector

if TYPE_CHECKING:
    from fedpers.config import RunConfig

SELECTORS: dict[str, Selector] = {
    "uniform": UniformSelector(),
    "pow-d": PowerOfChoice(),
    "deadline": DeadlineSelector(),
    "oort": OortSelector(),
}


def build_selector(cfg: RunConfig) -> Selector:
    """The ``selection=`` selector with its parameters from the run config."""
    return SELECTORS[cfg.selection].configure(cfg)


__all__ = ["SELECTORS", "ClientRecord", "ClientStats", "Selector", "build_selector",
           "jain_index"]
