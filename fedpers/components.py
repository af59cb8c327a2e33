"""Every component registry, by the run-config key that names its components."""

from __future__ import annotations

from typing import Any

from clients import PERSONALIZERS
from fedpers.aggregation import AGGREGATORS
from fedpers.attacks import ATTACKS
from fedpers.codecs import CODECS
from fedpers.data import TASKS
from fedpers.privacy import DP_MODES
from fedpers.registry import Registry
from fedpers.selection import SELECTORS
from strategies import STRATEGIES


def registries() -> dict[str, Registry[Any]]:
    """The component registries by run-config key (``task``, ``strategy``,
    ``personalization``, ``codec``, ``selection``, ``aggregation``, ``attack``, ``dp``).

    :func:`fedpers.config.parse_run_config` checks every name against them, so that a
    bad name fails before any work. It imports this module when it first needs it: the
    registries import torch and Flower (seconds), which ``fedpers --help`` and parsing
    without name checks do without.
    """
    found: tuple[Registry[Any], ...] = (TASKS, STRATEGIES, PERSONALIZERS, CODECS, SELECTORS,
                                        AGGREGATORS, ATTACKS, DP_MODES)
    return {r.key: r for r in found}
