"""Robust aggregation rules, one per file, pure numpy (``aggregation=``).

``AGGREGATORS`` maps each name to its class; :func:`build_aggregator` makes the
one a run config asks for. Clipping (``clip-update-norm``) is a separate step
(:func:`clip_updates`) applied to every update first. ``fedpers.robust`` is the
thin layer that applies them to a round's checked replies before the strategy's
own ``aggregate_train``; see its docstring for what each combination means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpers.aggregation.base import Aggregate, Aggregator
from fedpers.aggregation.clipping import clip_updates
from fedpers.aggregation.krum import Krum, krum_scores, min_clients
from fedpers.aggregation.mean import Mean
from fedpers.aggregation.median import Median
from fedpers.aggregation.multi_krum import MultiKrum
from fedpers.aggregation.trimmed_mean import TrimmedMean

if TYPE_CHECKING:
    from fedpers.config import RunConfig

AGGREGATORS: dict[str, type] = {
    "mean": Mean,
    "median": Median,
    "trimmed-mean": TrimmedMean,
    "krum": Krum,
    "multi-krum": MultiKrum,
}


def build_aggregator(cfg: RunConfig) -> Aggregator:
    """The aggregator named by ``aggregation``, with its parameters from the config."""
    if cfg.aggregation not in AGGREGATORS:
        raise ValueError(f"unknown aggregation {cfg.aggregation!r}; valid names: "
                         f"{', '.join(sorted(AGGREGATORS))}")
    return AGGREGATORS[cfg.aggregation].from_config(cfg)


__all__ = ["AGGREGATORS", "Aggregate", "Aggregator", "Krum", "Mean", "Median", "MultiKrum",
           "TrimmedMean", "build_aggregator", "clip_updates", "krum_scores", "min_clients"]
