"""Natural clients from a folder of ``<client>.npz`` files.

Each file is one client (files sorted by name) and holds the arrays
``x_train``, ``y_train``, ``x_test``, ``y_test``: features already preprocessed
by the user, integer labels from 0. ``num-clients`` must equal the number of
files; the run-config ``partition`` and ``local-test-fraction`` do not apply
(the files fix both). The global test set is all clients' test rows.

Every file is checked as it is read, and a :class:`~fedpers.data.base.DataError`
names the file and the array: features must be real numbers (no complex, object or
string dtype) and finite as float32 (no NaN or Inf); labels must be integers
``0..C-1`` with ``C <= MAX_CLASSES`` (10,000): the model has one output per class,
so a single stray label would otherwise size the model and every round's traffic.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fedpers.data._common import features, labels
from fedpers.data.base import ClientData, DataError, DataSpec, FederatedData, Kind
from fedpers.data.partition import cap_indices
from fedpers.seeds import Stream, derive_seed

logger = logging.getLogger(__name__)

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
#: Most classes a task 'npz' federation may have: labels are class indices
#: ``0..C-1`` with ``C <= MAX_CLASSES``. The model's output layer has ``C`` units, so a
#: stray label of 10**6 would otherwise build a million-class model (hundreds of MB per
#: client and round).
MAX_CLASSES = 10_000
# What np.load and reading a member raise for bytes that are no valid .npz archive.
_UNREADABLE = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, KeyError,
               NotImplementedError, OverflowError)


def client_files(data_dir: str) -> list[Path]:
    """The ``.npz`` files of ``data_dir``, sorted by name (one per client)."""
    if not data_dir:
        raise ValueError("task 'npz' needs run-config key 'data-dir': a folder of "
                         "<client>.npz files")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"task 'npz': data-dir {str(folder)!r} is not an existing "
                                f"folder")
    files = sorted(folder.glob("*.npz"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"task 'npz': data-dir {str(folder)!r} holds no .npz files "
                                f"(one <client>.npz per client, with arrays "
                                f"{', '.join(ARRAYS)})")
    return files


def _check_labels(path: Path, name: str, y: np.ndarray) -> np.ndarray:
    """``y`` as int64 class indices in ``0..MAX_CLASSES - 1``; DataError naming the file,
    the array and the first offending label otherwise."""
    if y.ndim != 1:
        raise DataError(f"{path}: {name} must be one-dimensional, got shape {y.shape}")
    if y.dtype == np.bool_ or y.dtype.kind in "iu":
        bad: Any = np.flatnonzero((y < 0) | (y >= MAX_CLASSES)) if y.dtype != np.bool_ else []
    elif y.dtype.kind == "f":
        whole = np.isfinite(y) & (np.mod(y, 1) == 0)
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise DataError(f"{path}: {name} must hold integer class labels; row {row} "
                            f"holds {y[row]!r}")
        bad = np.flatnonzero((y < 0) | (y >= MAX_CLASSES))
    else:
        raise DataError(f"{path}: {name} must hold integer class labels, got dtype {y.dtype}")
    if len(bad):
        row = int(bad[0])
        label = y[row].item()
        if label < 0:
            raise DataError(f"{path}: {name} holds negative labels (row {row}: {label}); "
                            f"classes must be 0, 1, ...")
        raise DataError(f"{path}: {name} holds label {label} (row {row}); labels must be "
                        f"class indices 0..C-1 with at most {MAX_CLASSES:,} classes "
                        f"(fedpers.data.npz.MAX_CLASSES)")
    return y.astype(np.int64)


def _check_features(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    """``x`` as float32 rows of at least one feature; DataError naming the file, the
    array and the first bad row for non-numeric, complex or non-finite values."""
    if x.ndim < 2:
        raise DataError(f"{path}: {name} must have shape (rows, features...), got {x.shape}")
    if x.dtype.kind == "c":
        raise DataError(f"{path}: {name} holds complex numbers (dtype {x.dtype}); the model "
                        f"takes real features: split them into real and imaginary columns")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: {name} must be numeric, got dtype {x.dtype}")
    if int(np.prod(x.shape[1:])) == 0:
        raise DataError(f"{path}: {name} rows have no features (shape {x.shape})")
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
        out = features(x)
    finite = np.isfinite(out).all(axis=tuple(range(1, out.ndim)))
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{path}: {name} holds values that are not finite numbers (NaN, "
                        f"Inf, or beyond float32's range +-3.4e38), first in row {row}; "
                        f"clean or drop those rows")
    return out


def read_client(path: Path) -> dict[str, np.ndarray]:
    """Read and check one client file; features float32, labels int64.

    Raises
    ------
    DataError
        Naming ``path`` (and the array) when the file is not a readable ``.npz``
        archive, lacks an array, or holds values no model can use: non-numeric,
        complex or non-finite features, labels that are not integers in
        ``0..MAX_CLASSES - 1``, rows that do not match.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy array
            raise DataError(f"{path} is not a .npz archive of arrays {', '.join(ARRAYS)} "
                            f"(np.savez writes one)")
        with loaded as npz:
            missing = [a for a in ARRAYS if a not in npz.files]
            if missing:
                raise DataError(f"{path} lacks array(s) {', '.join(missing)} (each file "
                                f"needs {', '.join(ARRAYS)})")
            raw = {a: npz[a] for a in ARRAYS}
    except DataError:
        raise
    except _UNREADABLE as exc:  # not a zip, truncated, pickled objects, bad headers
        raise DataError(f"{path} is not a readable .npz file ({type(exc).__name__}: "
                        f"{exc})") from exc
    out: dict[str, np.ndarray] = {}
    for part in ("train", "test"):
        x, y = raw[f"x_{part}"], raw[f"y_{part}"]
        out[f"x_{part}"] = _check_features(path, f"x_{part}", x)
        out[f"y_{part}"] = _check_labels(path, f"y_{part}", y)
        if len(x) != len(y):
            raise DataError(f"{path}: x_{part} has {len(x)} rows but y_{part} has "
                            f"{len(y)}")
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise DataError(f"{path}: x_train rows have shape {out['x_train'].shape[1:]} but "
                        f"x_test rows have {out['x_test'].shape[1:]}")
    if len(out["x_train"]) == 0:
        raise DataError(f"{path}: x_train is empty (every client needs training rows)")
    return out


def _cap(data: dict[str, np.ndarray], max_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Cap train + test rows at ``max_samples``, keeping their ratio (stratified)."""
    n_train, n_test = len(data["y_train"]), len(data["y_test"])
    if max_samples == 0 or n_train + n_test <= max_samples:
        return data
    k_train = max(1, min(n_train, round(max_samples * n_train / (n_train + n_test))))
    k_test = min(n_test, max_samples - k_train)
    out = dict(data)
    for part, k, key in (("train", k_train, Stream.DATA_CAP_TRAIN),
                         ("test", k_test, Stream.DATA_CAP_TEST)):
        y = data[f"y_{part}"]
        keep = cap_indices(np.arange(len(y)), y, k, derive_seed(seed, key)) if k else \
            np.zeros(0, np.int64)
        out[f"x_{part}"] = features(data[f"x_{part}"][keep])
        out[f"y_{part}"] = labels(y[keep])
    return out


class NpzTask:
    """Classification on user-supplied per-client arrays, with an MLP on flattened features."""

    name: str = "npz"
    kind: Kind = "classification"

    def load(self, spec: DataSpec) -> FederatedData:
        """Read one client per file in ``spec.data_dir`` (sorted by file name)."""
        files = client_files(spec.data_dir)
        if spec.num_clients != len(files):
            raise ValueError(f"task 'npz': run-config 'num-clients' = {spec.num_clients} but "
                             f"data-dir {spec.data_dir!r} holds {len(files)} .npz files (one "
                             f"per client); set num-clients = {len(files)}")
        if spec.partition not in ("natural", "iid", "dirichlet", "pathological"):
            raise ValueError(f"run-config key 'partition' = {spec.partition!r} is unknown")
        if spec.partition != "natural":
            logger.info("task 'npz' uses the files' natural partition; partition=%r ignored",
                        spec.partition)
        clients, shape, first = [], None, None
        for cid, path in enumerate(files):
            data = read_client(path)
            if shape is None:
                shape, first = data["x_train"].shape[1:], path.name
            elif data["x_train"].shape[1:] != shape:
                raise ValueError(f"task 'npz': {path.name} has feature shape "
                                 f"{data['x_train'].shape[1:]} but {first} has {shape}; all "
                                 f"files must agree")
            data = _cap(data, spec.max_samples_per_client,
                        derive_seed(spec.seed, Stream.DATA_CAP, cid))
            clients.append(ClientData(x_train=data["x_train"], y_train=data["y_train"],
                                      x_test=data["x_test"], y_test=data["y_test"]))
        assert shape is not None
        x_test = features(np.concatenate([c.x_test for c in clients]))
        y_test = labels(np.concatenate([c.y_test for c in clients]))
        if len(y_test) == 0:
            raise ValueError(f"task 'npz': every file in {spec.data_dir!r} has an empty x_test; "
                             f"the global test set would be empty")
        num_classes = int(max(max(c.y_train.max(initial=0), c.y_test.max(initial=0))
                              for c in clients)) + 1
        used = len(np.unique(np.concatenate([c.y_train for c in clients] + [y_test])))
        if used < num_classes:
            logger.warning("task 'npz': labels run 0..%d, so the model has %d outputs, but "
                           "only %d of those classes occur in %s", num_classes - 1,
                           num_classes, used, spec.data_dir)
        return FederatedData(kind=self.kind, clients=clients, x_test=x_test, y_test=y_test,
                             input_shape=tuple(int(d) for d in shape), num_classes=num_classes)

    def build_model(self, input_shape: tuple[int, ...], num_classes: int):
        """A fresh :class:`fedpers.models.MLP` (128 -> 64 hidden units)."""
        from fedpers.models import MLP

        return MLP(input_shape, num_classes, hidden=(128, 64))

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """The identity (the files hold model-ready features), as float32."""
        return features(raw)
