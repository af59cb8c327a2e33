"""Checks of run-config values that must fit together (partition and task, devices
and selection, virtual nodes, ...), and the round size the server uses.

Only the fields of the parsed config are needed here; checks that need the component
registries (strategy, task, robust aggregation, differential privacy) live next to
those components and are called by :func:`fedpers.config.parse_run_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedpers.errors import ConfigError

if TYPE_CHECKING:
    from fedpers.config import RunConfig

# Tasks whose clients are given by the data (partition = "natural").
NATURAL_TASKS = ("npz", "shakespeare")
FEATURE_SHIFT_TASKS = ("fmnist", "fmnist-bn")


def check_combination(cfg: RunConfig, defaults: Mapping[str, Any]) -> None:
    """Refuse run-config values that do not fit together (each a ConfigError naming the
    keys); ``defaults`` are the keys' defaults (``fedpers.config.config_keys()``)."""
    if cfg.partition == "natural" and cfg.task not in NATURAL_TASKS:
        raise ConfigError(f"run-config key 'partition' = 'natural' needs a task with natural "
                          f"clients ({', '.join(NATURAL_TASKS)}); task {cfg.task!r} has none")
    if cfg.task == "shakespeare" and cfg.partition not in ("natural", "iid"):
        raise ConfigError(f"run-config key 'partition' = {cfg.partition!r}: task 'shakespeare' "
                          f"has natural clients, one per (play, role); set partition = "
                          f"'natural' (each speaker's own lines) or 'iid' (the same speakers' "
                          f"samples pooled and dealt out uniformly)")
    if cfg.feature_shift > 0 and cfg.task not in FEATURE_SHIFT_TASKS:
        raise ConfigError(f"run-config key 'feature-shift' = {cfg.feature_shift} applies to "
                          f"tasks {', '.join(FEATURE_SHIFT_TASKS)}; task {cfg.task!r} has no "
                          f"image intensities to shift")
    if cfg.task == "npz" and not cfg.data_dir:
        raise ConfigError("run-config key 'data-dir' must name a folder of <client>.npz files "
                          "for task 'npz'")
    if cfg.min_train_clients > clients_per_round(cfg)[0]:
        raise ConfigError(f"run-config key 'min-train-clients' = {cfg.min_train_clients} "
                          f"exceeds the {clients_per_round(cfg)[0]} clients asked to train "
                          f"each round (num-clients x fraction-train): no round could "
                          f"aggregate")
    if cfg.error_feedback and cfg.codec == "none":
        raise ConfigError("run-config key 'error-feedback' = true needs a lossy codec; "
                          "'codec' is 'none', which sends everything")
    _check_devices(cfg)
    _check_virtual_nodes(cfg)
    if cfg.dp == "none":
        for key in ("dp-clip-norm", "dp-noise-multiplier", "dp-delta"):
            value = getattr(cfg, key.replace("-", "_"))
            if value != defaults[key]:
                raise ConfigError(f"run-config key {key!r} = {value!r} needs differential "
                                  f"privacy; set dp = 'client-clipping'")


def clients_per_round(cfg: RunConfig) -> tuple[int, int]:
    """(clients asked to train, clients asked to evaluate) in a round, rounded as the
    server rounds them (``fedpers.server_app``; evaluation draws from all clients)."""
    return (max(1, int(round(cfg.fraction_train * cfg.num_clients))),
            max(1, int(round(cfg.fraction_evaluate * cfg.num_clients))))


def _check_virtual_nodes(cfg: RunConfig) -> None:
    """``virtual-nodes``: between 1 and ``num-clients`` SuperNodes, no checkpointing.

    Fewer nodes than clients per round is fine: a call's messages are dealt over the
    nodes (``fedpers.virtual.VirtualGrid``). Flower's Simulation Engine hands each node
    at most one message per 0.1 s poll, so K nodes deliver at most 10 K messages per
    second (see the README's "Many clients in simulation").
    """
    if cfg.virtual_nodes == 0:
        if cfg.clients_per_call > 1:
            raise ConfigError(f"run-config key 'clients-per-call' = {cfg.clients_per_call} "
                              f"packs the clients of a virtual SuperNode; it needs "
                              f"virtual-nodes > 0 (it is 0: one SuperNode per client, one "
                              f"message each)")
        return
    if cfg.virtual_nodes > cfg.num_clients:
        raise ConfigError(f"run-config key 'virtual-nodes' = {cfg.virtual_nodes} exceeds "
                          f"'num-clients' = {cfg.num_clients}; use at most one SuperNode per "
                          f"client (or 0 for exactly one each)")
    if cfg.checkpoint_every:
        raise ConfigError(f"run-config key 'virtual-nodes' = {cfg.virtual_nodes} does not "
                          f"support checkpoint and resume; set checkpoint-every = 0 (it is "
                          f"{cfg.checkpoint_every}) or virtual-nodes = 0")


def _check_devices(cfg: RunConfig) -> None:
    if cfg.device_profile == "trace" and not cfg.device_trace:
        raise ConfigError("run-config key 'device-trace' must name a CSV file for "
                          "device-profile 'trace'")
    if cfg.device_trace and cfg.device_profile != "trace":
        raise ConfigError(f"run-config key 'device-trace' is set but 'device-profile' is "
                          f"{cfg.device_profile!r}; set device-profile = 'trace' to use it")
    if cfg.device_profile == "none":
        for key, value, neutral in (("round-deadline", cfg.round_deadline, 0.0),
                                    ("device-availability", cfg.device_availability, 1.0),
                                    ("device-dropout", cfg.device_dropout, 0.0)):
            if value != neutral:
                raise ConfigError(f"run-config key {key!r} = {value!r} needs the simulated "
                                  f"clock; set device-profile = 'lognormal' or 'trace'")
    if cfg.device_profile == "trace" and cfg.device_availability != 1.0:
        raise ConfigError("run-config key 'device-availability' applies to device-profile "
                          "'lognormal'; a trace gives each client's availability")
    if cfg.selection == "deadline" and cfg.round_deadline <= 0:
        raise ConfigError("run-config key 'selection' = 'deadline' needs 'round-deadline' > 0 "
                          "(and a device-profile)")
    if cfg.pow_d and cfg.selection != "pow-d":
        raise ConfigError(f"run-config key 'pow-d' = {cfg.pow_d} applies to selection "
                          f"'pow-d'; 'selection' is {cfg.selection!r}")


__all__ = ["FEATURE_SHIFT_TASKS", "NATURAL_TASKS", "check_combination", "clients_per_round"]
