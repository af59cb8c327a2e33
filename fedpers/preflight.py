"""Pre-flight checks: the components a run config names must work on the task's model.

Config parsing (:func:`fedpers.config.parse_run_config`) checks each key and the
combinations it can judge from names alone. Some combinations can only be judged
with the data loaded and the model built, and would otherwise fail inside the
ServerApp or every client, after Ray started (~30 s) and with an MLflow run left
FAILED. :func:`check_run` builds what the server builds from the config, on the
task's real model, and raises :class:`~fedpers.config.ConfigError` naming the key:

* ``personalization``: the personaliser's private part must exist on this model
  (``fedbn`` needs normalisation layers; ``fedper`` and ``fedrep`` a head), and
  something must stay shared;
* ``strategy``, ``selection``, ``dp``, ``aggregation``: each builds from the config;
* ``codec`` / ``codec-down``: a round trip of the model's own arrays (every dtype of
  its state_dict) through the upload codec, with ``error-feedback``, and through the
  broadcast codec;
* ``device-profile`` / ``device-trace``: the simulated clock builds (the trace file is
  read and checked).

It also warns when one copy of the model is large (every round sends it to and from
each selected client). It costs one model construction and one codec round trip:
well under a second for the tasks here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from fedpers.config import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from fedpers.config import RunConfig
    from fedpers.data import FederatedData

logger = logging.getLogger(__name__)

#: One copy of the model above this many bytes draws a warning (per client and round
#: it goes down once and up once).
LARGE_MODEL_BYTES = 100_000_000
#: Personalisers whose private part is the model's head (``head_prefixes``).
HEAD_PERSONALIZERS = ("fedper", "fedrep")


def check_run(cfg: RunConfig, fed: FederatedData) -> None:
    """Check that ``cfg``'s components work together on ``fed``'s model.

    Parameters
    ----------
    cfg
        The parsed run config.
    fed
        The loaded data (``fedpers.data.load_federated``): input shape and classes.

    Raises
    ------
    ConfigError
        Naming the run-config key whose component cannot work with this task,
        model or config.
    """
    import torch

    from fedpers.data import TASKS

    task = TASKS[cfg.task]
    state = torch.random.get_rng_state()  # the caller's RNG stream stays as it was
    try:
        model = task.build_model(fed.input_shape, fed.num_classes)
    finally:
        torch.random.set_rng_state(state)
    arrays = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    private = _check_personalization(cfg, model, set(arrays))
    shared = {k: v for k, v in arrays.items() if k not in private}
    _check_builders(cfg)
    _check_codecs(cfg, arrays, shared)
    _warn_size(cfg, arrays)


def _check_personalization(cfg: RunConfig, model: nn.Module, names: set[str]) -> set[str]:
    """The personaliser's private keys on ``model``; ConfigError when it cannot work."""
    from clients import PERSONALIZERS

    name = cfg.personalization
    try:
        private = set(PERSONALIZERS[name].private_keys(model))
    except ValueError as exc:  # e.g. fedbn on a model without normalisation layers
        raise ConfigError(f"run-config key 'personalization' = {name!r} with task "
                          f"{cfg.task!r}: {exc}") from exc
    if name in HEAD_PERSONALIZERS and not private:
        raise ConfigError(f"run-config key 'personalization' = {name!r} keeps the model's "
                          f"head private, but task {cfg.task!r}'s model "
                          f"({type(model).__name__}) declares no head (head_prefixes); use "
                          f"another personalization")
    if private and private >= names:
        raise ConfigError(f"run-config key 'personalization' = {name!r} would keep every "
                          f"parameter of task {cfg.task!r}'s model private; nothing would "
                          f"be federated")
    return private


def _check_builders(cfg: RunConfig) -> None:
    """Build the strategy, selector, privacy layer, aggregator and clock as the server
    does; a ValueError (a bad value or file) becomes a ConfigError naming the key."""
    from fedpers.aggregation import build_aggregator
    from fedpers.devices import DeviceParams, build_clock
    from fedpers.privacy import build_privacy
    from fedpers.selection import build_selector
    from strategies import build_strategy

    steps: list[tuple[str, Any]] = [
        ("strategy", lambda: build_strategy(cfg)),
        ("selection", lambda: build_selector(cfg)),
        ("dp", lambda: build_privacy(cfg)),
        ("aggregation", lambda: build_aggregator(cfg)),
        ("device-trace" if cfg.device_profile == "trace" else "device-profile",
         lambda: build_clock(DeviceParams.from_config(cfg))),
    ]
    for key, build in steps:
        try:
            build()
        except ValueError as exc:
            raise ConfigError(f"run-config key {key!r} = {cfg.to_dict()[key]!r}: "
                              f"{exc}") from exc


def _check_codecs(cfg: RunConfig, arrays: dict[str, np.ndarray],
                  shared: dict[str, np.ndarray]) -> None:
    """Round-trip the model's arrays through the broadcast and upload codecs."""
    from fedpers.codecs import build_codec
    from fedpers.codecs.update import (
        decode_update,
        decode_weights,
        encode_update,
        encode_weights,
    )

    rng = np.random.default_rng(0)
    down = build_codec(cfg, cfg.codec_down)
    try:
        if down.lossy:
            decode_weights(down, encode_weights(down, arrays, rng), arrays)
    except ValueError as exc:
        raise ConfigError(f"run-config key 'codec-down' = {cfg.codec_down!r} cannot encode "
                          f"task {cfg.task!r}'s model: {exc}") from exc
    up = build_codec(cfg)
    ef = bool(cfg.error_feedback) and up.lossy
    try:
        moved = {k: v + np.ones_like(v) if v.dtype.kind == "f" else v
                 for k, v in shared.items()}
        sent = encode_update(up, moved, shared, rng, residual=None, error_feedback=ef)
        decode_update(up, sent.payload, shared)
    except ValueError as exc:
        raise ConfigError(f"run-config key 'codec' = {cfg.codec!r} cannot encode task "
                          f"{cfg.task!r}'s model updates: {exc}") from exc


def _warn_size(cfg: RunConfig, arrays: dict[str, np.ndarray]) -> None:
    size = sum(int(a.nbytes) for a in arrays.values())
    if size > LARGE_MODEL_BYTES:
        logger.warning("task %r: the model holds %.1f MB; every round sends it to each "
                       "selected client and back (before any codec)", cfg.task, size / 1e6)


__all__ = ["HEAD_PERSONALIZERS", "LARGE_MODEL_BYTES", "check_run"]
