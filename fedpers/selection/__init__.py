"""Client selection, seeded. One selector per file.

fedpers selects clients itself (by partition id, from a seeded generator) and
shows the strategy only the selected nodes, so every selector composes with
every strategy. Selectors that need to know the clients (their losses, their
simulated round times, how often they were picked) read the round loop's
:class:`ClientStats`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpers.registry import Registry
from fedpers.selection.base import (
    ClientRecord,
    ClientStats,
    SelectionParams,
    Selector,
    jain_index,
)
from fedpers.selection.deadline import DeadlineSelector
from fedpers.selection.oort import OortSelector
from fedpers.selection.pow_d import PowerOfChoice
from fedpers.selection.uniform import UniformSelector

if TYPE_CHECKING:
    from fedpers.config import RunConfig

SELECTORS: Registry[Selector] = Registry("selection", {
    "uniform": UniformSelector(),
    "pow-d": PowerOfChoice(),
    "deadline": DeadlineSelector(),
    "oort": OortSelector(),
})


def build_selector(cfg: RunConfig) -> Selector:
    """The ``selection=`` selector built from the config's selection keys
    (:class:`SelectionParams`)."""
    params = SelectionParams.from_config(cfg)
    return SELECTORS.build(params.selection, params)


__all__ = ["SELECTORS", "ClientRecord", "ClientStats", "SelectionParams", "Selector",
           "build_selector", "jain_index"]
