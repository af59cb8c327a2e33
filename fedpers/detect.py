"""Score new data with a trained anomaly detector from an MLflow run.

The run's artifacts hold the global autoencoder (``model/global_model.pt``) and its
metadata with the calibrated threshold (``model/model_meta.json``). Each input row
is preprocessed with the task's fixed ``preprocess`` function, scored by its
reconstruction error and flagged when the score passes the threshold.

With a client id (``fedpers detect --client ID``) the detector is that device's own:
the model its personaliser evaluated with and the threshold it calibrated on its own
normal data, which the device kept on its disk when the run set ``client-model-dir``
(``fedpers.client_detector``); ``--model-dir`` points at a copy elsewhere.

The files it reads (the model's metadata and weights, the rows to score) are checked
in :mod:`fedpers.detect_files`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedpers import client_detector as cd
from fedpers.detect_files import DetectError, check_meta, check_state, read_meta, read_weights
from fedpers.tracking import Tracker


@dataclass
class Detector:
    """An autoencoder, its threshold and the task whose ``preprocess`` feeds it."""

    task: str
    model: torch.nn.Module
    threshold: float
    input_shape: tuple[int, ...]
    source: str = "global model"  # what it is, for messages

    @classmethod
    def from_run(cls, run_id: str, tracking_uri: str = "", client: int | None = None,
                 model_dir: str = "") -> Detector:
        """The detector of an MLflow run: the global one, or client ``client``'s own.

        Parameters
        ----------
        run_id
            MLflow run id of an anomaly-task run.
        tracking_uri
            MLflow store (``""``: the default one).
        client
            A partition id: that client's personalised detector (its personaliser's
            model and its own threshold), which it kept on its disk under the run's
            ``client-model-dir`` (:mod:`fedpers.client_detector`). ``None``: the global
            model and the global threshold from the run's artifacts.
        model_dir
            With ``client``: look here instead of the run's ``client-model-dir`` (the
            client's own folder, its run's folder, or a ``client-model-dir`` root);
            the MLflow store is then not read.

        Raises
        ------
        DetectError
            The run, or the client's detector, cannot be used; the message says why.
        """
        if client is not None:
            return cls.from_client(run_id, client, tracking_uri, model_dir)
        if model_dir:
            raise DetectError("--model-dir holds a client's own detector: give --client ID "
                              "too")
        store = Tracker.connect(tracking_uri)
        try:
            local = Path(store.download_artifacts(run_id, "model"))
        except Exception as exc:  # noqa: BLE001
            raise DetectError(f"run {run_id!r} has no model artifacts: {exc}") from exc
        meta = read_meta(local / "model_meta.json", f"run {run_id!r}'s model/model_meta.json")
        state = read_weights(local / "global_model.pt")
        return cls._build(meta, state, f"run {run_id!r}", "global model")

    @classmethod
    def from_client(cls, run_id: str, client: int, tracking_uri: str = "",
                    model_dir: str = "") -> Detector:
        """Client ``client``'s own detector of run ``run_id`` (see :meth:`from_run`)."""
        if model_dir:
            folder = _given_client_folder(Path(model_dir).expanduser(), run_id, client)
        else:
            folder = _logged_client_folder(run_id, client, tracking_uri)
        try:
            meta, state = cd.load_detector(folder)
        except cd.ClientDetectorError as exc:
            raise DetectError(str(exc)) from exc
        # the same checks as the global detector's files: a crafted detector.json or
        # model.pt is one line naming the file, never a KeyError or a huge model
        meta = check_meta(meta, str(folder / cd.META_FILE))
        state = check_state(state, folder / cd.MODEL_FILE)
        if int(meta.get("partition_id", -1)) != client:
            raise DetectError(f"{folder / cd.META_FILE} is the detector of client "
                              f"{meta.get('partition_id')}, not of client {client}")
        trained_in = str(meta.get("mlflow_run_id") or "")
        if trained_in and trained_in != run_id:
            raise DetectError(f"{folder / cd.META_FILE} is client {client}'s detector of run "
                              f"{trained_in!r}, not of run {run_id!r}")
        source = (f"client {client}'s own model ({meta.get('personalization')}, round "
                  f"{meta.get('server_round')})")
        return cls._build(meta, state, str(folder), source)

    @classmethod
    def _build(cls, meta: dict, state: dict[str, torch.Tensor], where: str,
               source: str) -> Detector:
        """The detector that ``meta`` (task, input shape, threshold) and ``state`` describe."""
        from fedpers.data import TASKS

        if meta.get("kind") != "anomaly":
            raise DetectError(f"{where} trained task {meta.get('task')!r}, which is not "
                              f"an anomaly-detection task")
        if meta.get("threshold") is None:
            raise DetectError(f"{where} has no calibrated threshold")
        if meta.get("task") not in TASKS:
            raise DetectError(f"{where} trained task {meta.get('task')!r}, which this "
                              f"version of fedpers does not know")
        task = TASKS[meta["task"]]
        try:  # a crafted or damaged metadata file: say so, not a KeyError
            shape = tuple(int(d) for d in meta["input_shape"])
            threshold = float(meta["threshold"])
            model = _model_for(task, shape, int(meta["num_classes"]), state, where)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, DetectError):
                raise
            raise DetectError(f"{where}: the model metadata has a missing or invalid entry "
                              f"({type(exc).__name__}: {exc})") from exc
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise DetectError(f"{where}: the saved weights do not fit task "
                              f"{meta['task']!r}'s model ({exc})") from exc
        model.eval()
        return cls(meta["task"], model, threshold, shape, source)

    def score(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, flags) for raw input rows."""
        from fedpers.data import TASKS
        from fedpers.training import anomaly_scores

        n_features = int(np.prod(self.input_shape))
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim == 1:
            raw = raw.reshape(1, -1)
        raw = raw.reshape(len(raw), -1)
        if raw.shape[1] != n_features:
            raise DetectError(f"input rows have {raw.shape[1]} values; the model of task "
                              f"{self.task!r} expects {n_features}")
        if not np.isfinite(raw).all():
            bad = int(np.argwhere(~np.isfinite(raw).all(axis=1))[0][0])
            raise DetectError(f"input row {bad} has a missing or non-numeric value")
        x = TASKS[self.task].preprocess(raw)
        x = np.ascontiguousarray(x, dtype=np.float32).reshape((len(raw), *self.input_shape))
        scores = anomaly_scores(self.model, x, torch.device("cpu"))
        return scores, (scores > self.threshold).astype(np.int64)


def _logged_client_folder(run_id: str, client: int, tracking_uri: str) -> Path:
    """Where client ``client`` of run ``run_id`` kept its detector, from the run's
    logged ``client-model-dir`` (on the machine the clients ran on)."""
    from fedpers.data import TASKS

    store = Tracker.connect(tracking_uri)
    try:
        params = store.get_run(run_id).data.params
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own types
        raise DetectError(f"run {run_id!r} not found in the MLflow store: {exc}") from exc
    task = params.get("task", "")
    if task in TASKS and TASKS[task].kind != "anomaly":
        raise DetectError(f"run {run_id!r} trained task {task!r}, which is not an "
                          f"anomaly-detection task")
    root = params.get(cd.MODEL_DIR_KEY, "")
    if not root:
        raise DetectError(f"run {run_id!r} ran without run-config key "
                          f"'{cd.MODEL_DIR_KEY}', so its clients kept no detector; train "
                          f"with --set {cd.MODEL_DIR_KEY}=/absolute/folder (or give "
                          f"--model-dir if a device kept its detector elsewhere)")
    try:
        run_dir = cd.run_folder(Path(root).expanduser(), run_id)
    except cd.ClientDetectorError as exc:
        raise DetectError(str(exc)) from exc
    return _pick_client(run_dir, client, run_id)


def _given_client_folder(base: Path, run_id: str, client: int) -> Path:
    """Client ``client``'s folder from ``--model-dir``: the client's own folder (it holds
    ``detector.json``), its run's folder (``client-<id>/`` inside), or a
    ``client-model-dir`` root (``<run>/client-<id>/`` inside)."""
    if not base.is_dir():
        raise DetectError(f"--model-dir {str(base)!r} is not a folder")
    if (base / cd.META_FILE).is_file():
        return base
    if cd.saved_clients(base) or not (base / run_id).is_dir():
        return _pick_client(base, client, run_id)
    return _pick_client(base / run_id, client, run_id)


def _pick_client(run_dir: Path, client: int, run_id: str) -> Path:
    """``run_dir/client-<client>``; an unknown client id is refused, naming the valid ones."""
    folder = run_dir / f"client-{int(client)}"
    if (folder / cd.META_FILE).is_file():
        return folder
    valid = cd.saved_clients(run_dir)
    if not valid:
        raise DetectError(f"no client of run {run_id!r} kept a detector under {run_dir} (not "
                          f"the machine the clients ran on? a SuperNode's node config "
                          f"'{cd.MODEL_DIR_KEY}' wins over the run's: give --model-dir)")
    raise DetectError(f"run {run_id!r} has no detector of client {client} under {run_dir}; "
                      f"valid client ids: {', '.join(map(str, valid))}")


def _model_for(task, shape: tuple[int, ...], num_classes: int,
               state: dict[str, torch.Tensor], where: str) -> torch.nn.Module:
    """``task``'s model for ``shape``, after checking on torch's meta device (no memory)
    that ``state`` fits it, so that crafted metadata cannot make it allocate a huge
    model."""
    with torch.device("meta"):
        probe = task.build_model(shape, num_classes)
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))[:3]
        raise DetectError(f"{where}: the saved weights do not fit the model that its metadata "
                          f"describes (input shape {shape}, {num_classes} classes); first "
                          f"differences: {diff}")
    return task.build_model(shape, num_classes)
