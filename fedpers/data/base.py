"""What a task hands the rest of fedpers: per-client arrays and a global test set.

Data code imports neither model nor Flower code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Kind = Literal["classification", "anomaly"]


class DataError(ValueError):
    """The data a run config points at cannot be used: a file is unreadable or holds
    values no model can train on. The message names the file (and the array, row or
    label) and says what is wrong."""


@dataclass(frozen=True)
class DataSpec:
    """The run-config keys that decide which data each client holds."""

    task: str
    num_clients: int
    partition: str
    alpha: float
    classes_per_client: int
    local_test_fraction: float
    max_samples_per_client: int
    seed: int
    data_dir: str = ""
    anomaly_classes: tuple[int, ...] = ()
    threshold_percentile: float = 95.0
    feature_shift: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> DataSpec:  # cfg: fedpers.config.RunConfig
        return cls(task=cfg.task, num_clients=cfg.num_clients, partition=cfg.partition,
                   alpha=cfg.alpha, classes_per_client=cfg.classes_per_client,
                   local_test_fraction=cfg.local_test_fraction,
                   max_samples_per_client=cfg.max_samples_per_client, seed=cfg.seed,
                   data_dir=cfg.data_dir, anomaly_classes=cfg.anomaly_class_list,
                   threshold_percentile=cfg.threshold_percentile,
                   feature_shift=cfg.feature_shift)


@dataclass
class ClientData:
    """One client's local data, already preprocessed (float32 features).

    Classification: ``y`` holds int64 class labels. Anomaly detection: ``y`` is 1
    for an anomaly and 0 for normal; ``x_train`` holds normal data only and
    ``x_val`` is normal data held back for threshold calibration.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None

    @property
    def num_train(self) -> int:
        return int(len(self.x_train))


@dataclass
class FederatedData:
    """The whole federation as one process sees it."""

    kind: Kind
    clients: list[ClientData]
    x_test: np.ndarray  # global held-out test set (never in any client's data)
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int  # 2 for anomaly tasks


class Task(Protocol):
    """A data set + model family + kind of metrics, registered in ``fedpers.data.TASKS``."""

    name: str
    kind: Kind

    def load(self, spec: DataSpec) -> FederatedData:
        """Load, preprocess and partition the data (seeded by ``spec.seed``)."""
        ...

    def build_model(self, input_shape: tuple[int, ...], num_classes: int):
        """A fresh ``torch.nn.Module`` for this task (initialised from torch's RNG)."""
        ...

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """Map raw input rows (as a user would give ``fedpers detect``) to model input.

        A pure function: fixed constants only, no state fitted on any client's data.
        """
        ...
