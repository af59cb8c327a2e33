"""Client selection, seeded. One selector per file.

fedpers selects clients itself (by partition id, from a seeded generator) and
shows the strategy only the selected nodes, so every selector composes with
every strategy.
"""

from fedpers.selection.base import Selector
from fedpers.selection.uniform import UniformSelector

SELECTORS: dict[str, Selector] = {
    "uniform": UniformSelector(),
}

__all__ = ["SELECTORS", "Selector"]
