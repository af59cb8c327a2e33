"""scikit-learn's bundled handwritten digits (1797 images of 8x8 pixels, 10 classes).

The fast task for tests: a seeded stratified 20% global test set, the rest
partitioned over clients; features are pixel intensities scaled from 0..16 to [0, 1].
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from fedpers.data._common import classification_clients, features, global_holdout, labels
from fedpers.data.base import DataSpec, FederatedData, Kind

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.ascontiguousarray(bunch.data, dtype=np.float64)
    y = labels(bunch.target)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


class DigitsTask:
    """8x8 digits classification with an MLP (64 -> 64 -> 32 -> 10)."""

    name: str = "digits"
    kind: Kind = "classification"
    num_classes = 10
    input_shape = (64,)

    def load(self, spec: DataSpec) -> FederatedData:
        """Hold out 20% (stratified, seeded), partition the rest over ``spec.num_clients``."""
        x, y = _raw_digits()
        pool, test = global_holdout(y, spec.seed)
        clients = classification_clients(x[pool], y[pool], spec, self.preprocess)
        logger.debug("digits: %d clients, %d global test rows", len(clients), len(test))
        return FederatedData(kind=self.kind, clients=clients,
                             x_test=features(self.preprocess(x[test])), y_test=labels(y[test]),
                             input_shape=self.input_shape, num_classes=self.num_classes)

    def build_model(self, input_shape: tuple[int, ...], num_classes: int):
        """A fresh :class:`fedpers.models.MLP`."""
        from fedpers.models import MLP

        return MLP(input_shape, num_classes, hidden=(64, 32))

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """Pixel intensities 0..16 (shape ``(n, 64)`` or ``(n, 8, 8)``) to float32 in [0, 1]."""
        arr = np.asarray(raw, dtype=np.float32)
        return features(arr.reshape(len(arr), -1) / np.float32(16.0))
