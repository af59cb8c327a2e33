"""Fashion-MNIST (Xiao et al., arXiv:1708.07747) from its four IDX files.

The 60k training images are partitioned over clients; the official 10k test
set is the global test set. Images become float32 ``(1, 28, 28)`` in [0, 1].
The files are looked for in ``data-dir`` or, when that is empty, in
``$FEDPERS_FMNIST_DIR`` and then ``/usr/share/datasets/fashion-mnist`` (Debian
package ``dataset-fashion-mnist``).
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import zlib
from pathlib import Path

import numpy as np

from fedpers.data._common import classification_clients, features, labels, shift_features
from fedpers.data.base import DataError, DataSpec, FederatedData, Kind

logger = logging.getLogger(__name__)

ENV_VAR = "FEDPERS_FMNIST_DIR"
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
INPUT_SHAPE = (1, 28, 28)


def candidate_dirs(data_dir: str = "") -> list[Path]:
    """Folders searched for the IDX files, in order."""
    if data_dir:
        return [Path(data_dir)]
    env = os.environ.get(ENV_VAR, "")
    return [Path(env), Path(DEFAULT_DIR)] if env else [Path(DEFAULT_DIR)]


def find_fmnist_dir(data_dir: str = "") -> Path:
    """The first candidate folder that holds all four files.

    Raises
    ------
    FileNotFoundError
        Naming the files needed, every folder searched with what it lacks, and
        how to get them.
    """
    searched = []
    for folder in candidate_dirs(data_dir):
        missing = [f for f in FILES.values() if not (folder / f).is_file()]
        if not missing:
            return folder
        searched.append(f"{folder} (missing: {', '.join(missing)})")
    raise FileNotFoundError(
        "Fashion-MNIST needs the four IDX files " + ", ".join(FILES.values())
        + ". Looked in: " + "; ".join(searched)
        + f". Install them with `apt-get install dataset-fashion-mnist` (into {DEFAULT_DIR}), "
        f"or put the four files in a folder and pass it as run-config 'data-dir' "
        f"(or set ${ENV_VAR}).")


def read_idx(path: Path) -> np.ndarray:
    """Parse one gzipped IDX file of unsigned bytes into a uint8 array."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, corrupt
        raise DataError(f"{path} is not a readable gzipped IDX file ({type(exc).__name__}: "
                        f"{exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims} but the payload has "
                         f"{len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=2)
def _load_raw(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    root = Path(folder)
    arrays = {k: read_idx(root / name) for k, name in FILES.items()}
    for kind in ("train", "test"):
        if len(arrays[f"{kind}_images"]) != len(arrays[f"{kind}_labels"]):
            raise ValueError(f"Fashion-MNIST in {root}: {kind} images and labels differ in "
                             f"length")
    logger.debug("read Fashion-MNIST from %s", root)
    # frombuffer arrays are read-only: the cached copies cannot be changed by callers
    return (arrays["train_images"], arrays["train_labels"].astype(np.int64),
            arrays["test_images"], arrays["test_labels"].astype(np.int64))


def load_raw(data_dir: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw ``(x_train, y_train, x_test, y_test)``: uint8 images ``(n, 28, 28)``, int64 labels.

    Cached per folder and read-only; copy before changing.
    """
    return _load_raw(str(find_fmnist_dir(data_dir)))


def preprocess_images(raw: np.ndarray) -> np.ndarray:
    """Pixels 0..255, shaped ``(n, 784)``, ``(n, 28, 28)`` or ``(n, 1, 28, 28)``, to
    float32 ``(n, 1, 28, 28)`` in [0, 1]."""
    arr = np.asarray(raw)
    if arr.size % 784:
        raise ValueError(f"expected 28x28 images, got an array of shape {arr.shape}")
    arr = arr.reshape(-1, *INPUT_SHAPE).astype(np.float32)
    return features(arr / np.float32(255.0))


class FmnistTask:
    """Fashion-MNIST classification with a small CNN (about 47k parameters)."""

    name: str = "fmnist"
    kind: Kind = "classification"

    def load(self, spec: DataSpec) -> FederatedData:
        """Partition the official training set; the official test set is the global test."""
        x_train, y_train, x_test, y_test = load_raw(spec.data_dir)
        clients = shift_features(classification_clients(x_train, y_train, spec,
                                                        self.preprocess), spec)
        return FederatedData(kind=self.kind, clients=clients,
                             x_test=self.preprocess(x_test), y_test=labels(y_test),
                             input_shape=INPUT_SHAPE, num_classes=10)

    def build_model(self, input_shape: tuple[int, ...], num_classes: int):
        """A fresh :class:`fedpers.models.CNN`."""
        from fedpers.models import CNN

        return CNN(input_shape, num_classes)

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """See :func:`preprocess_images`."""
        return preprocess_images(raw)


class FmnistBNTask(FmnistTask):
    """Fashion-MNIST with the CNN plus a BatchNorm2d after each convolution: a model
    with normalisation layers for ``personalization = "fedbn"`` (same data, partitions
    and metrics as ``fmnist``)."""

    name: str = "fmnist-bn"

    def build_model(self, input_shape: tuple[int, ...], num_classes: int):
        """A fresh :class:`fedpers.models.CNN` with ``norm=True``."""
        from fedpers.models import CNN

        return CNN(input_shape, num_classes, norm=True)
