"""Helpers shared by the task modules: array conventions and client assembly."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from fedpers.data.base import ClientData, DataSpec
from fedpers.data.partition import client_splits, split_local
from fedpers.seeds import Stream, derive_seed

#: Share of each anomaly-task client's normal training rows held out as ``x_val``
#: (threshold calibration).
VAL_FRACTION = 0.15
#: Share of a task's pooled data held out as the global test set when the data
#: set has no official test split.
GLOBAL_TEST_FRACTION = 0.2
#: Fewest normal rows an anomaly-task client must hold before its local split.
MIN_NORMAL_ROWS = 10


Preprocess = Callable[[np.ndarray], np.ndarray]


def features(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous float32 array."""
    return np.ascontiguousarray(x, dtype=np.float32)


def labels(y: np.ndarray) -> np.ndarray:
    """``y`` as a C-contiguous int64 array."""
    return np.ascontiguousarray(y, dtype=np.int64)


def global_holdout(y: np.ndarray, seed: int,
                   fraction: float = GLOBAL_TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(y))`` into (client pool, global test)."""
    return split_local(np.arange(len(y)), y, fraction, derive_seed(seed, Stream.DATA_GLOBAL_TEST))


def classification_clients(x_raw: np.ndarray, y: np.ndarray, spec: DataSpec,
                           preprocess: Preprocess) -> list[ClientData]:
    """Partition ``(x_raw, y)`` as ``spec`` says and preprocess each client's rows."""
    out = []
    for train, test in client_splits(y, spec):
        out.append(ClientData(x_train=features(preprocess(x_raw[train])),
                              y_train=labels(y[train]),
                              x_test=features(preprocess(x_raw[test])),
                              y_test=labels(y[test])))
    return out


def intensity_shift(num_clients: int, strength: float, seed: int
                    ) -> list[tuple[float, float]]:
    """Each client's ``(contrast a, brightness b)`` for ``feature-shift`` = ``strength``:
    ``a ~ U(1 - strength, 1)``, ``b ~ U(0, 1 - a)`` (so [0, 1] pixels stay in [0, 1]),
    drawn from the seed and the client id; (1, 0) for every client when strength is 0."""
    out = []
    for cid in range(num_clients):
        rng = np.random.default_rng(derive_seed(seed, Stream.DATA_FEATURE_SHIFT, cid))
        a = float(rng.uniform(1.0 - strength, 1.0))  # exactly 1 when strength is 0
        out.append((a, float(rng.uniform(0.0, 1.0 - a))))
    return out


def shift_features(clients: list[ClientData], spec: DataSpec) -> list[ClientData]:
    """Feature shift across clients (``feature-shift``): client c's train and test images
    become ``a_c x + b_c`` (:func:`intensity_shift`), the kind of per-device difference
    (sensor gain and offset) that FedBN's private normalisation layers are for (Li et
    al., arXiv 2102.07623). The global test set is left as it is."""
    if spec.feature_shift <= 0:
        return clients
    shifts = intensity_shift(len(clients), spec.feature_shift, spec.seed)
    return [dataclasses.replace(c, x_train=features(c.x_train * np.float32(a) + np.float32(b)),
                                x_test=features(c.x_test * np.float32(a) + np.float32(b)))
            for c, (a, b) in zip(clients, shifts, strict=True)]


def normal_val_split(normal_idx: np.ndarray, strata: np.ndarray, seed: int,
                     cid: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a client's normal training rows into (fit, validation), stratified by ``strata``."""
    return split_local(normal_idx, strata, VAL_FRACTION,
                       derive_seed(seed, Stream.DATA_VALIDATION, cid))


def too_few_normal_rows(task: str, cid: int, count: int, spec: DataSpec) -> ValueError:
    """The error for an anomaly-task client left without enough normal rows to train on."""
    return ValueError(
        f"task {task!r}: client {cid} holds only {count} normal rows (needs >= "
        f"{MIN_NORMAL_ROWS} to train and calibrate) with run-config 'partition' = "
        f"{spec.partition!r}, 'num-clients' = {spec.num_clients}, 'alpha' = {spec.alpha}, "
        f"'classes-per-client' = {spec.classes_per_client}, 'max-samples-per-client' = "
        f"{spec.max_samples_per_client}; raise alpha, lower num-clients, or use partition "
        f"'iid'")
