"""Every component registry, by the run-config key that names its components."""

from __future__ import annotations

from typing import Any

from clients import PERSONALIZERS
from clients.base import PersonalizationParams, TrainingParams
from fedpers.aggregation import AGGREGATORS, AggregationParams
from fedpers.attacks import ATTACKS, AttackParams
from fedpers.checkpoint_files import CheckpointParams
from fedpers.codecs import CODECS, CodecParams
from fedpers.data import TASKS, DataSpec
from fedpers.devices import DeviceParams
from fedpers.privacy import DP_MODES, DpParams
from fedpers.registry import Registry
from fedpers.selection import SELECTORS, SelectionParams
from fedpers.virtual import VirtualNodeParams
from strategies import STRATEGIES, StrategyParams

#: Each component family's frozen parameter dataclass, declared next to its code: a
#: component is built from its family's keys (``cfg.params(Family)``), never from the
#: whole run config. A key may belong to several families (``seed``, ``num-clients``).
PARAM_FAMILIES: tuple[type, ...] = (
    DataSpec,               # task and data: fedpers/data/base.py
    TrainingParams,         # local training: clients/base.py
    StrategyParams,         # strategies/base.py
    PersonalizationParams,  # clients/base.py
    CodecParams,            # fedpers/codecs/base.py
    SelectionParams,        # fedpers/selection/base.py
    DeviceParams,           # fedpers/devices.py
    AggregationParams,      # fedpers/aggregation/base.py
    AttackParams,           # fedpers/attacks/base.py
    DpParams,               # fedpers/privacy/dpfedavg.py
    CheckpointParams,       # fedpers/checkpoint_files.py
    VirtualNodeParams,      # fedpers/virtual.py
)

#: The keys no component reads: the round loop's and the app's own (rounds, fractions,
#: evaluation, timeouts, the torch device, update screening, the anomaly detector's
#: folder, where the run is tracked). A new key belongs to a family or here
#: (tests/test_params.py fails otherwise).
LOOP_KEYS: frozenset[str] = frozenset({
    "fraction-train", "fraction-evaluate", "min-train-clients",
    "eval-every", "round-timeout", "device", "max-update-norm", "clip-update-norm",
    "client-model-dir", "tracking-uri", "experiment", "mlflow-run-id",
})


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
