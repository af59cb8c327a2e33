"""Fashion-MNIST as anomaly detection: some classes normal, the others anomalous.

Labels in ``anomaly-classes`` (default 5, 7, 9: sandal, sneaker, ankle boot)
are anomalies. The normal training images are partitioned over devices with the
configured scheme over their class labels, so each device has its own mix of
normal classes. Each device's normal rows split into a local test part
(``local-test-fraction``) and training rows, of which 15% become ``x_val`` for
threshold calibration. The anomalous training images are dealt out in disjoint
seeded shares, one per device; each device's test part takes from its share as
many anomalies as keep the global test set's anomaly rate (for 3 anomaly classes
of 10, 3 anomalies per 7 normal test images). The global test set is the
official 10k test set with binary labels; it never overlaps client data.
"""

from __future__ import annotations

import logging

import numpy as np

from fedpers.data._common import (
    MIN_NORMAL_ROWS,
    features,
    labels,
    normal_val_split,
    too_few_normal_rows,
)
from fedpers.data.base import ClientData, DataSpec, FederatedData, Kind
from fedpers.data.fmnist import INPUT_SHAPE, load_raw, preprocess_images
from fedpers.data.partition import client_splits
from fedpers.seeds import Stream, derive_seed

logger = logging.getLogger(__name__)

DEFAULT_ANOMALY_CLASSES = (5, 7, 9)
NUM_LABELS = 10


def anomaly_classes(spec: DataSpec) -> tuple[int, ...]:
    """``spec.anomaly_classes`` (default 5, 7, 9), checked."""
    classes = tuple(sorted(set(spec.anomaly_classes or DEFAULT_ANOMALY_CLASSES)))
    bad = [c for c in classes if not 0 <= c < NUM_LABELS]
    if bad:
        raise ValueError(f"run-config key 'anomaly-classes': {bad} are not Fashion-MNIST "
                         f"labels (0..{NUM_LABELS - 1})")
    if len(classes) >= NUM_LABELS:
        raise ValueError("run-config key 'anomaly-classes' lists every label; at least one "
                         "class must stay normal")
    return classes


class FmnistAdTask:
    """Fashion-MNIST anomaly detection with a small convolutional autoencoder."""

    name: str = "fmnist-ad"
    kind: Kind = "anomaly"

    def load(self, spec: DataSpec) -> FederatedData:
        """Partition normal training images; add a share of anomalies to each local test."""
        x_train, y_train, x_test, y_test = load_raw(spec.data_dir)
        anomalous = anomaly_classes(spec)
        is_anomaly = np.isin(y_train, anomalous)
        normal_idx = np.flatnonzero(~is_anomaly)
        shares = np.array_split(
            np.random.default_rng(derive_seed(spec.seed, Stream.DATA_ANOMALIES))
            .permutation(np.flatnonzero(is_anomaly)), spec.num_clients)
        rate = len(anomalous) / (NUM_LABELS - len(anomalous))  # anomalies per normal image
        clients = []
        for cid, (train, test) in enumerate(client_splits(y_train[normal_idx], spec)):
            normal_train, normal_test = normal_idx[train], normal_idx[test]
            if len(normal_train) + len(normal_test) < MIN_NORMAL_ROWS:
                raise too_few_normal_rows(self.name, cid, len(normal_train) + len(normal_test),
                                          spec)
            fit, val = normal_val_split(normal_train, y_train, spec.seed, cid)
            n_anomalies = min(len(shares[cid]), int(np.floor(len(normal_test) * rate + 0.5)))
            local_test = np.sort(np.concatenate([normal_test, shares[cid][:n_anomalies]]))
            clients.append(ClientData(
                x_train=self.preprocess(x_train[fit]), y_train=np.zeros(len(fit), np.int64),
                x_test=self.preprocess(x_train[local_test]),
                y_test=labels(is_anomaly[local_test]),
                x_val=self.preprocess(x_train[val])))
        logger.debug("fmnist-ad: anomaly classes %s, %d clients", anomalous, len(clients))
        return FederatedData(kind=self.kind, clients=clients, x_test=self.preprocess(x_test),
                             y_test=labels(np.isin(y_test, anomalous)),
                             input_shape=INPUT_SHAPE, num_classes=2)

    def build_model(self, input_shape: tuple[int, ...], num_classes: int = 2):
        """A fresh :class:`fedpers.models.ConvAutoencoder` (``num_classes`` is unused)."""
        from fedpers.models import ConvAutoencoder

        return ConvAutoencoder(input_shape, latent=32)

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """Pixels 0..255 to float32 ``(n, 1, 28, 28)`` in [0, 1] (as task ``fmnist``)."""
        return features(preprocess_images(raw))
