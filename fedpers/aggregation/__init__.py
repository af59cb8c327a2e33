"""Robust aggregation rules, one per file, pure numpy (``aggregation=``).

``AGGREGATORS`` maps each name to its class, whose ``build`` classmethod makes it from
the :class:`AggregationParams`; :func:`build_aggregator` makes the one a run config
asks for. Clipping (``clip-update-norm``) is a separate step
(:func:`clip_updates`) applied to every update first. ``fedpers.robust`` is the
thin layer that applies them to a round's checked replies before the strategy's
own ``aggregate_train``; see its docstring for what each combination means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpers.aggregation.base import Aggregate, AggregationParams, Aggregator
from fedpers.aggregation.clipping import clip_updates
from fedpers.aggregation.krum import Krum, krum_scores, min_clients
from fedpers.aggregation.mean import Mean
from fedpers.aggregation.median import Median
from fedpers.aggregation.multi_krum import MultiKrum
from fedpers.aggregation.trimmed_mean import TrimmedMean
from fedpers.registry import Registry

if TYPE_CHECKING:
    from fedpers.config import RunConfig

AGGREGATORS: Registry[type] = Registry("aggregation", {
    "mean": Mean,
    "median": Median,
    "trimmed-mean": TrimmedMean,
    "krum": Krum,
    "multi-krum": MultiKrum,
})


def build_aggregator(cfg: RunConfig) -> Aggregator:
    """The aggregator named by ``aggregation``, built from the config's aggregation keys
    (:class:`AggregationParams`).

    Raises
    ------
    ConfigError
        For an unknown name (naming ``aggregation`` and listing the valid names).
    """
    params = AggregationParams.from_config(cfg)
    agg: Aggregator = AGGREGATORS.build(params.aggregation, params)
    return agg


__all__ = ["AGGREGATORS", "Aggregate", "AggregationParams", "Aggregator", "Krum", "Mean",
           "Median", "MultiKrum", "TrimmedMean", "build_aggregator", "clip_updates",
           "krum_scores", "min_clients"]
