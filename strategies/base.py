"""What a strategy entry declares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flwr.serverapp.strategy import Strategy

if TYPE_CHECKING:
    from fedpers.config import RunConfig

# fedpers does client selection itself (seeded, see fedpers.selection) and hands the
# strategy a grid that shows only the selected nodes, so every strategy is built to
# take all nodes it is shown.
TAKE_ALL = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": 1,
            "min_evaluate_nodes": 1, "min_available_nodes": 1}


@dataclass(frozen=True)
class StrategySpec:
    """A ``strategy=`` entry: a Flower strategy factory plus its client half."""

    build: Callable[[RunConfig], Strategy]
    local_update: str = "sgd"  # key in clients.LOCAL_UPDATES
    paper: str = ""
