"""Score new data with a trained anomaly detector from an MLflow run.

The run's artifacts hold the global autoencoder (``model/global_model.pt``) and its
metadata with the calibrated threshold (``model/model_meta.json``). Each input row
is preprocessed with the task's fixed ``preprocess`` function, scored by its
reconstruction error and flagged when the score passes the threshold.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

LABEL_COLUMNS = ("anomaly", "label", "target", "y", "class")


class DetectError(ValueError):
    """The run or the input cannot be used for detection."""


@dataclass
class Detector:
    task: str
    model: torch.nn.Module
    threshold: float
    input_shape: tuple[int, ...]

    @classmethod
    def from_run(cls, run_id: str, tracking_uri: str = "") -> Detector:
        from fedpers.data import TASKS
        from fedpers.tracking import Tracker

        client = Tracker.connect(tracking_uri)
        try:
            local = Path(client.download_artifacts(run_id, "model"))
        except Exception as exc:  # noqa: BLE001
            raise DetectError(f"run {run_id!r} has no model artifacts: {exc}") from exc
        meta = json.loads((local / "model_meta.json").read_text())
        if meta.get("kind") != "anomaly":
            raise DetectError(f"run {run_id!r} trained task {meta.get('task')!r}, which is not "
                              f"an anomaly-detection task")
        if meta.get("threshold") is None:
            raise DetectError(f"run {run_id!r} has no calibrated threshold")
        task = TASKS[meta["task"]]
        shape = tuple(meta["input_shape"])
        model = task.build_model(shape, int(meta["num_classes"]))
        state = torch.load(local / "global_model.pt", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        return cls(meta["task"], model, float(meta["threshold"]), shape)

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


def read_input(path: str | Path) -> np.ndarray:
    """Rows from a .npy array or a numeric CSV (an optional header; a label column dropped)."""
    p = Path(path)
    if not p.is_file():
        raise DetectError(f"input file {str(p)!r} does not exist")
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix != ".csv":
        raise DetectError(f"input must be a .csv or .npy file, got {p.name!r}")
    with open(p, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if not rows:
        raise DetectError(f"{p} is empty")
    header = None
    try:
        [float(v) for v in rows[0]]
    except ValueError:
        header, rows = [h.strip().lower() for h in rows[0]], rows[1:]
    keep = list(range(len(header))) if header else None
    if header:
        keep = [i for i, h in enumerate(header) if h not in LABEL_COLUMNS]
    try:
        data = [[float(r[i]) for i in (keep if keep is not None else range(len(r)))]
                for r in rows]
    except (ValueError, IndexError) as exc:
        raise DetectError(f"{p}: every row must hold the same numeric columns ({exc})") from exc
    return np.asarray(data, dtype=np.float64)


def write_output(path: str | Path, scores: np.ndarray, flags: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "score", "anomaly"])
        for i, (s, f) in enumerate(zip(scores, flags, strict=True)):
            writer.writerow([i, f"{s:.8g}", int(f)])
