"""Natural clients from a folder of ``<client>.npz`` files.

Each file is one client (files sorted by name) and holds the arrays
``x_train``, ``y_train``, ``x_test``, ``y_test``: features already preprocessed
by the user, integer labels from 0. ``num-clients`` must equal the number of
files; the run-config ``partition`` and ``local-test-fraction`` do not apply
(the files fix both). The global test set is all clients' test rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedpers.data._common import STAGE_CLIENTS, features, labels
from fedpers.data.base import ClientData, DataSpec, FederatedData, Kind
from fedpers.data.partition import cap_indices, derive_seed

logger = logging.getLogger(__name__)

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


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
    if y.ndim != 1:
        raise ValueError(f"{path.name}: {name} must be one-dimensional, got shape {y.shape}")
    if y.dtype == np.bool_ or np.issubdtype(y.dtype, np.integer):
        out = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
        out = y.astype(np.int64)
    else:
        raise ValueError(f"{path.name}: {name} must hold integer class labels, got dtype "
                         f"{y.dtype}")
    if out.size and out.min() < 0:
        raise ValueError(f"{path.name}: {name} holds negative labels (classes must be 0, 1, ...)")
    return out


def read_client(path: Path) -> dict[str, np.ndarray]:
    """Read and check one client file; features float32, labels int64."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [a for a in ARRAYS if a not in npz.files]
            if missing:
                raise ValueError(f"{path.name} lacks array(s) {', '.join(missing)} (each file "
                                 f"needs {', '.join(ARRAYS)})")
            raw = {a: npz[a] for a in ARRAYS}
    except (OSError, EOFError) as exc:  # not a zip / truncated file
        raise ValueError(f"{path.name} is not a readable .npz file ({exc})") from exc
    out: dict[str, np.ndarray] = {}
    for part in ("train", "test"):
        x, y = raw[f"x_{part}"], raw[f"y_{part}"]
        if x.ndim < 2:
            raise ValueError(f"{path.name}: x_{part} must have shape (rows, features...), got "
                             f"{x.shape}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(f"{path.name}: x_{part} must be numeric, got dtype {x.dtype}")
        if len(x) != len(y):
            raise ValueError(f"{path.name}: x_{part} has {len(x)} rows but y_{part} has "
                             f"{len(y)}")
        out[f"x_{part}"] = features(x)
        out[f"y_{part}"] = _check_labels(path, f"y_{part}", y)
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise ValueError(f"{path.name}: x_train rows have shape {out['x_train'].shape[1:]} but "
                         f"x_test rows have {out['x_test'].shape[1:]}")
    if len(out["x_train"]) == 0:
        raise ValueError(f"{path.name}: x_train is empty (every client needs training rows)")
    return out


def _cap(data: dict[str, np.ndarray], max_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Cap train + test rows at ``max_samples``, keeping their ratio (stratified)."""
    n_train, n_test = len(data["y_train"]), len(data["y_test"])
    if max_samples == 0 or n_train + n_test <= max_samples:
        return data
    k_train = max(1, min(n_train, round(max_samples * n_train / (n_train + n_test))))
    k_test = min(n_test, max_samples - k_train)
    out = dict(data)
    for part, k, key in (("train", k_train, 0), ("test", k_test, 1)):
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
                        derive_seed(spec.seed, STAGE_CLIENTS, cid))
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
        return FederatedData(kind=self.kind, clients=clients, x_test=x_test, y_test=y_test,
                             input_shape=tuple(int(d) for d in shape), num_classes=num_classes)

    def build_model(self, input_shape: tuple[int, ...], num_classes: int):
        """A fresh :class:`fedpers.models.MLP` (128 -> 64 hidden units)."""
        from fedpers.models import MLP

        return MLP(input_shape, num_classes, hidden=(128, 64))

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """The identity (the files hold model-ready features), as float32."""
        return features(raw)
