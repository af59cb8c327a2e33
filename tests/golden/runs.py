"""The golden runs: short, seeded runs whose final metrics are kept in ``golden.json``.

Together they use every registered name of every registry of
``fedpers.components.registries()`` (task, strategy, personalization, codec, selection,
aggregation, attack, dp), both simulated device clocks (``lognormal`` and ``trace``),
the broadcast codecs, every partition, stragglers, update clipping, ``virtual-nodes``
with ``clients-per-call``, and checkpoint/resume. ``test_golden.py`` replays them and
requires the same numbers, bit for bit; ``python -m tests.golden.record`` records them.

A run config is a plain dict of run-config keys. Values may hold ``{files}``: the
folder of files a run needs (npz clients, a device trace, client state), made by
:func:`materialise` from fixed data (nothing random, nothing downloaded).

Runs in ``RESUMED`` are replayed interrupted: stopped (as by Ctrl-C) right after the
checkpoint of the given round is stored, then resumed from it with
``fedpers.checkpoint.resume_config``; their golden numbers are those of the
uninterrupted run, which ``record`` also runs, and requires to be equal.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: what every golden run starts from: tiny, seeded, fast
BASE: dict[str, Any] = {
    "task": "digits", "num-clients": 3, "num-server-rounds": 2, "local-epochs": 2,
    "batch-size": 16, "lr": 0.1, "max-samples-per-client": 60, "partition": "dirichlet",
    "alpha": 1.0, "seed": 5, "device": "cpu",
}

RUNS: dict[str, dict[str, Any]] = {
    # the baseline: FedAvg, nothing else, client momentum; q8 broadcast
    "fedavg-baseline": {**BASE, "momentum": 0.5, "codec-down": "q8"},
    # proximal local update, Ditto's personal models, 8-bit upload, fp16 broadcast,
    # stragglers, 3 of 4 clients per round, iid split
    "fedprox-ditto-q8": {
        **BASE, "num-clients": 4, "fraction-train": 0.75, "partition": "iid",
        "strategy": "fedprox", "proximal-mu": 0.1, "personalization": "ditto",
        "ditto-lambda": 0.2, "codec": "q8", "quant-block-size": 64, "codec-down": "fp16",
        "straggler-fraction": 0.5, "straggler-work": 0.5},
    # all three kinds of client state (SCAFFOLD c_i, FedPer's head, the error-feedback
    # residual) across a checkpoint; pow-d selection; the lognormal clock
    "scaffold-fedper-topk-resume": {
        **BASE, "num-server-rounds": 3, "strategy": "scaffold", "personalization": "fedper",
        "codec": "topk", "sparse-fraction": 0.1, "error-feedback": True,
        "selection": "pow-d", "fraction-train": 0.67, "device-profile": "lognormal",
        "checkpoint-every": 1, "client-state-dir": "{files}/client-state"},
    # FedNova over stragglers, FedRep, 4-bit upload, Oort, the pathological split
    "fednova-fedrep-q4-oort": {
        **BASE, "num-clients": 4, "partition": "pathological", "classes-per-client": 3,
        "strategy": "fednova", "personalization": "fedrep", "fedrep-head-epochs": 1,
        "codec": "q4", "quant-block-size": 32, "selection": "oort", "fraction-train": 0.5,
        "device-profile": "lognormal", "straggler-fraction": 0.25},
    # FedAdam, APFL, QSGD, coordinate-wise median against sign-flipping clients
    "fedadam-apfl-qsgd-median-signflip": {
        **BASE, "num-clients": 4, "strategy": "fedadam", "personalization": "apfl",
        "codec": "qsgd", "qsgd-levels": 3, "aggregation": "median",
        "attack": "sign-flip", "attack-fraction": 0.25, "attack-scale": 3.0},
    # FedYogi, fine-tuning, rand-k with fp16 values, trimmed mean against scaling
    # clients, on Fashion-MNIST
    "fedyogi-finetune-randk-trimmed-scale-fmnist": {
        **BASE, "task": "fmnist", "num-clients": 4, "strategy": "fedyogi",
        "personalization": "finetune", "finetune-lr": 0.01, "codec": "randk",
        "sparse-fraction": 0.2, "sparse-values": "fp16", "error-feedback": True,
        "aggregation": "trimmed-mean", "trim-fraction": 0.25, "attack": "scale",
        "attack-fraction": 0.25},
    # FedAvgM, purely local models, sign codec, Krum against noise (2f + 3 = 5 clients)
    "fedavgm-local-sign-krum-noise": {
        **BASE, "num-clients": 5, "strategy": "fedavgm", "server-momentum": 0.5,
        "personalization": "local", "codec": "sign", "aggregation": "krum", "krum-f": 1,
        "attack": "noise", "attack-fraction": 0.2},
    # Multi-Krum against label flipping, fp16 upload, update clipping
    "multikrum-labelflip-fp16-clip": {
        **BASE, "num-clients": 5, "codec": "fp16", "aggregation": "multi-krum",
        "krum-f": 1, "multi-krum-m": 3, "attack": "label-flip", "attack-fraction": 0.2,
        "clip-update-norm": 2.0},
    # DP-FedAvg (clients clip, the server adds noise; epsilon logged), 2-bit upload, on
    # a folder of npz clients
    "dp-q2-npz": {
        **BASE, "task": "npz", "data-dir": "{files}/npz", "num-clients": 4,
        "fraction-train": 0.75, "dp": "client-clipping", "dp-clip-norm": 0.5,
        "dp-noise-multiplier": 0.8, "dp-delta": 1e-4, "codec": "q2",
        "quant-block-size": 16, "error-feedback": True},
    # deadline selection on a device trace with dropouts, anomaly detection on
    # Fashion-MNIST
    "deadline-trace-fmnist-ad": {
        **BASE, "task": "fmnist-ad", "num-clients": 4, "selection": "deadline",
        "fraction-train": 0.5, "device-profile": "trace",
        "device-trace": "{files}/trace.csv", "round-deadline": 30.0,
        "device-dropout": 0.2, "threshold-percentile": 90.0},
    # virtual SuperNodes serving two clients per call; the clients' state (FedPer's
    # head) is kept on disk between calls; anomaly detection on the shuttle data
    "virtual-nodes-shuttle-ad": {
        **BASE, "task": "shuttle-ad", "num-clients": 4, "virtual-nodes": 2,
        "clients-per-call": 2, "personalization": "fedper", "lr": 0.05},
    # FedBN on the batch-norm model with a per-client intensity shift
    "fedbn-feature-shift": {
        **BASE, "task": "fmnist-bn", "feature-shift": 0.5, "personalization": "fedbn"},
    # next-character prediction, one client per (play, role)
    "shakespeare-natural": {
        **BASE, "task": "shakespeare", "partition": "natural", "batch-size": 8,
        "lr": 0.5, "max-samples-per-client": 40},
}

#: runs replayed interrupted after the checkpoint of this round, then resumed
RESUMED: dict[str, int] = {"scaffold-fedper-topk-resume": 1}

#: keys whose value may differ between two runs of one config; none so far: the
#: simulated clock (``time/*``) is a function of the seed, and no wall-clock time is logged
NONDETERMINISTIC: frozenset[str] = frozenset()


def registry_names() -> dict[str, set[str]]:
    """{run-config key: every name its registry holds} for every registry."""
    from fedpers.components import registries as _registries

    return {key: set(reg) for key, reg in _registries().items()}


def uncovered(runs: Mapping[str, Mapping[str, Any]] = RUNS) -> dict[str, set[str]]:
    """Registry names no run in ``runs`` uses (a run uses a name as the value of the
    registry's key, or the key's default where the run leaves it out)."""
    from fedpers.config import config_keys

    defaults = config_keys()
    missing = {}
    for key, names in registry_names().items():
        used = {str(cfg.get(key, defaults[key])) for cfg in runs.values()}
        if names - used:
            missing[key] = names - used
    return missing


# ------------------------------------------------------------------ files the runs read
NPZ_CLIENTS = 4
TRACE_ROWS = [  # partition-id, compute-sps, up-bps, down-bps, availability
    (0, 400.0, 2.0e5, 1.0e6, 1.0),
    (1, 120.0, 5.0e4, 4.0e5, 0.9),
    (2, 40.0, 2.0e4, 1.0e5, 0.8),
    (3, 900.0, 1.0e6, 4.0e6, 1.0),
]


def _write_npz_clients(folder: Path) -> None:
    """Four clients cut from scikit-learn's bundled digits (no randomness): client i
    holds rows i, i + 4, i + 8, ...; the first 60 of them train, the next 15 test."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(NPZ_CLIENTS):
        rows = np.arange(i, len(y), NPZ_CLIENTS)
        train, test = rows[:60], rows[60:75]
        np.savez(folder / f"client-{i}.npz", x_train=x[train], y_train=y[train].astype(np.int64),
                 x_test=x[test], y_test=y[test].astype(np.int64))


def _write_trace(path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["partition-id", "compute-sps", "up-bps", "down-bps", "availability"])
        writer.writerows(TRACE_ROWS)


def materialise(cfg: Mapping[str, Any], files: Path) -> dict[str, Any]:
    """``cfg`` with ``{files}`` replaced by ``files``, whose npz clients and device trace
    are written first (only those the run names)."""
    files.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, value in cfg.items():
        if isinstance(value, str) and "{files}" in value:
            value = value.replace("{files}", str(files))
        out[key] = value
    if out.get("task") == "npz" and not (files / "npz").is_dir():
        _write_npz_clients(files / "npz")
    if out.get("device-profile") == "trace" and not (files / "trace.csv").is_file():
        _write_trace(files / "trace.csv")
    return out
