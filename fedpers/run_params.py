"""Which run-config keys describe a run: MLflow params versus tags.

A run logs as MLflow params only the keys that change what it computes under its
own choices: ``alpha`` only with ``partition = "dirichlet"``, ``proximal-mu`` only
with ``strategy = "fedprox"``, a codec's keys only when that codec is used, and so
on. Keys that say where a run is recorded (:data:`BOOKKEEPING_KEYS`) are tags.
``config.json`` (an artifact of every run) and the ``fedpers.config_digest`` tag
still cover every key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fedpers.config import RunConfig

#: where the run is recorded, not what it computes: logged as tags ``fedpers.<key>``
BOOKKEEPING_KEYS = ("tracking-uri", "experiment", "mlflow-run-id")
TAG_PREFIX = "fedpers."

_QUANTISERS = ("q8", "q4", "q2", "qsgd", "sign")
_SPARSIFIERS = ("topk", "randk")
_SERVER_LR = ("fedadam", "fedyogi", "fedavgm", "fednova", "scaffold")
_SERVER_MOMENTUM = ("fedadam", "fedyogi", "fedavgm")


def _codecs(cfg: RunConfig) -> set[str]:
    return {cfg.codec, cfg.codec_down}


def _anomaly(cfg: RunConfig) -> bool:
    from fedpers.data import TASKS

    spec = TASKS.get(cfg.task, None)
    return spec is not None and spec.kind == "anomaly"


#: key -> when it applies; a key not listed here always applies
APPLIES: Mapping[str, Callable[[RunConfig], bool]] = {
    "alpha": lambda c: c.partition == "dirichlet",
    "classes-per-client": lambda c: c.partition == "pathological",
    "proximal-mu": lambda c: c.strategy == "fedprox",
    "server-lr": lambda c: c.strategy in _SERVER_LR,
    "server-momentum": lambda c: c.strategy in _SERVER_MOMENTUM,
    "error-feedback": lambda c: c.codec != "none",
    "quant-block-size": lambda c: bool(_codecs(c) & set(_QUANTISERS)),
    "qsgd-levels": lambda c: "qsgd" in _codecs(c),
    "sparse-fraction": lambda c: bool(_codecs(c) & set(_SPARSIFIERS)),
    "sparse-values": lambda c: bool(_codecs(c) & set(_SPARSIFIERS)),
    "finetune-epochs": lambda c: c.personalization == "finetune",
    "finetune-lr": lambda c: c.personalization == "finetune",
    "fedrep-head-epochs": lambda c: c.personalization == "fedrep",
    "ditto-lambda": lambda c: c.personalization == "ditto",
    "apfl-alpha": lambda c: c.personalization == "apfl",
    "device-trace": lambda c: c.device_profile == "trace",
    "device-availability": lambda c: c.device_profile == "lognormal",
    "round-deadline": lambda c: c.device_profile != "none",
    "device-dropout": lambda c: c.device_profile != "none",
    "pow-d": lambda c: c.selection == "pow-d",
    "trim-fraction": lambda c: c.aggregation == "trimmed-mean",
    "krum-f": lambda c: c.aggregation in ("krum", "multi-krum"),
    "multi-krum-m": lambda c: c.aggregation == "multi-krum",
    "attack-fraction": lambda c: c.attack != "none",
    "attack-scale": lambda c: c.attack in ("sign-flip", "scale", "noise"),
    "dp-clip-norm": lambda c: c.dp != "none",
    "dp-noise-multiplier": lambda c: c.dp != "none",
    "dp-delta": lambda c: c.dp != "none",
    "anomaly-classes": _anomaly,
    "threshold-percentile": _anomaly,
    "client-model-dir": _anomaly,
    "clients-per-call": lambda c: c.virtual_nodes > 0,
}


def applicable_params(cfg: RunConfig) -> dict[str, Any]:
    """The run-config keys that apply to ``cfg``, with their values: the MLflow params.

    Every key but :data:`BOOKKEEPING_KEYS` and those whose :data:`APPLIES` condition
    is false for this config.
    """
    return {k: v for k, v in cfg.to_dict().items()
            if k not in BOOKKEEPING_KEYS and APPLIES.get(k, lambda c: True)(cfg)}


def bookkeeping_tags(cfg: RunConfig) -> dict[str, str]:
    """:data:`BOOKKEEPING_KEYS` that are set, as tags ``fedpers.<key>``."""
    values = cfg.to_dict()
    return {TAG_PREFIX + k: str(values[k]) for k in BOOKKEEPING_KEYS if values.get(k)}
