"""Statlog Shuttle as anomaly detection (ODDS version shipped with river).

49,097 rows of 9 integer sensor readings, 3,511 (7.2%) anomalies. A seeded
stratified 20% is the global test set; the rest is partitioned over clients
with the configured scheme over the binary label, so with ``dirichlet`` devices
get different anomaly rates. Each client keeps a stratified local test part
(normal and anomalous rows); of the rest, only normal rows are used: 85% to
train the autoencoder (``x_train``), 15% to calibrate its threshold (``x_val``).
Anomalous rows outside the local test part are not used.

If a draw leaves some client with fewer than 10 normal rows (likely with a
small ``alpha`` and many clients: Dirichlet over two labels gives extreme
quantity skew), the partition is redrawn with a derived seed, at most 10 times,
then a ``ValueError`` names the keys to change.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
from pathlib import Path

import numpy as np

from fedpers.data._common import (
    MIN_NORMAL_ROWS,
    features,
    global_holdout,
    labels,
    normal_val_split,
    too_few_normal_rows,
)
from fedpers.data.base import ClientData, DataSpec, FederatedData, Kind
from fedpers.data.partition import cap_indices, partition_indices, split_local
from fedpers.seeds import Stream, derive_seed

logger = logging.getLogger(__name__)

FILENAME = "shuttle.csv.gz"
COLUMNS = tuple(f"f{i}" for i in range(1, 10))
TARGET = "anomaly"
MAX_DRAWS = 10

#: Fixed centre and scale of each raw feature f1..f9 (round numbers near the
#: medians and spreads of normal operation in the UCI data; constants, never refit).
CENTER = np.array([45.0, 0.0, 85.0, 0.0, 40.0, 0.0, 40.0, 45.0, 5.0])
SCALE = np.array([10.0, 10.0, 10.0, 10.0, 15.0, 10.0, 10.0, 15.0, 10.0])


def csv_path(data_dir: str = "") -> Path:
    """``<data_dir>/shuttle.csv.gz``, or the copy inside the installed river package."""
    if data_dir:
        path = Path(data_dir) / FILENAME
    else:
        # locate river without importing it (importing river takes about a second)
        spec = importlib.util.find_spec("river")
        roots = list(spec.submodule_search_locations or []) if spec else []
        path = (Path(roots[0]) if roots else Path("river")) / "datasets" / FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"task 'shuttle-ad' needs {FILENAME} (columns {', '.join(COLUMNS)}, {TARGET}); "
            f"not found at {path}. It ships with the river package (`pip install river`); "
            f"or put the file in the folder given as run-config 'data-dir'")
    return path


@functools.lru_cache(maxsize=2)
def _read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as fh:
        header = fh.readline().strip().split(",")
        expected = [*COLUMNS, TARGET]
        if header != expected:
            raise ValueError(f"{path}: expected columns {expected}, got {header}")
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    x = np.ascontiguousarray(table[:, :9], dtype=np.float64)
    y = labels(table[:, 9])
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_raw(data_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Raw rows ``(n, 9)`` float64 and the int64 anomaly flag (cached, read-only)."""
    return _read_csv(str(csv_path(data_dir)))


def preprocess_rows(raw: np.ndarray) -> np.ndarray:
    """Fixed map of raw rows to model input: ``sign(z) * log1p(|z|)``, ``z = (x - CENTER) / SCALE``.

    Normal readings land roughly in [-2, 2]; the heavy tails (|f6| up to ~27,000)
    are compressed logarithmically so one reading cannot dominate the loss.
    """
    arr = np.asarray(raw, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(COLUMNS):
        raise ValueError(f"shuttle rows must have shape (n, {len(COLUMNS)}), got {arr.shape}")
    z = (arr - CENTER) / SCALE
    return features(np.sign(z) * np.log1p(np.abs(z)))


class ShuttleAdTask:
    """Shuttle anomaly detection with a dense autoencoder 9 -> 16 -> 4 -> 16 -> 9."""

    name: str = "shuttle-ad"
    kind: Kind = "anomaly"
    input_shape = (len(COLUMNS),)

    def _partition(self, y: np.ndarray, spec: DataSpec) -> list[np.ndarray]:
        """Client partitions (indices into ``y``), each with enough normal rows."""
        worst = (0, 0)
        for draw in range(MAX_DRAWS):
            try:
                parts = partition_indices(y, spec.num_clients, spec.partition, alpha=spec.alpha,
                                          classes_per_client=spec.classes_per_client,
                                          seed=derive_seed(spec.seed, Stream.DATA_PARTITION, draw))
            except ValueError:
                if spec.partition != "dirichlet" or draw == MAX_DRAWS - 1:
                    raise
                continue  # the partitioner's own redraws failed; try a fresh seed
            parts = [cap_indices(p, y, spec.max_samples_per_client,
                                 derive_seed(spec.seed, Stream.DATA_CAP, cid))
                     for cid, p in enumerate(parts)]
            normal = [int((y[p] == 0).sum()) for p in parts]
            if min(normal) >= MIN_NORMAL_ROWS:
                if draw:
                    logger.info("shuttle-ad: partition draw %d gave every client >= %d normal "
                                "rows", draw + 1, MIN_NORMAL_ROWS)
                return parts
            worst = (int(np.argmin(normal)), min(normal))
            if spec.partition != "dirichlet":
                break  # iid and pathological normal counts hardly depend on the seed
        raise too_few_normal_rows(self.name, worst[0], worst[1], spec)

    def load(self, spec: DataSpec) -> FederatedData:
        """Global 20% test split, then partition, local split and normal-only training rows."""
        x, y = load_raw(spec.data_dir)
        pool, test = global_holdout(y, spec.seed)
        parts = self._partition(y[pool], spec)
        clients = []
        for cid, part in enumerate(parts):
            local_train, local_test = split_local(
                pool[part], y, spec.local_test_fraction,
                derive_seed(spec.seed, Stream.DATA_LOCAL_SPLIT, cid))
            normal = local_train[y[local_train] == 0]
            fit, val = normal_val_split(normal, y, spec.seed, cid)
            clients.append(ClientData(
                x_train=self.preprocess(x[fit]), y_train=np.zeros(len(fit), np.int64),
                x_test=self.preprocess(x[local_test]), y_test=labels(y[local_test]),
                x_val=self.preprocess(x[val])))
        return FederatedData(kind=self.kind, clients=clients,
                             x_test=self.preprocess(x[test]), y_test=labels(y[test]),
                             input_shape=self.input_shape, num_classes=2)

    def build_model(self, input_shape: tuple[int, ...], num_classes: int = 2):
        """A fresh :class:`fedpers.models.DenseAutoencoder` (``num_classes`` is unused)."""
        from fedpers.models import DenseAutoencoder

        return DenseAutoencoder(int(np.prod(input_shape)), hidden=(16, 4))

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """See :func:`preprocess_rows`."""
        return preprocess_rows(raw)
