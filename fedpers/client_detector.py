"""A device's own anomaly detector, kept on its own disk (run-config key ``client-model-dir``).

The federated evaluation of an anomaly task scores each client's test part with the
model its personaliser evaluates with (``eval_model``: the fine-tuned copy, Ditto's or
APFL's personal model, FedPer's private head on the shared body, ...) and flags rows
above the threshold the client calibrated on its own normal validation rows. With
``client-model-dir`` set, each client keeps exactly that detector after every
evaluation:

    <client-model-dir>/<run key>/client-<partition id>/model.pt       the state_dict
    <client-model-dir>/<run key>/client-<partition id>/detector.json  threshold, task, ...

The run key is the MLflow run id (run config ``mlflow-run-id``, which ``fedpers run``
always sets; ``flwr-run-<Flower run id>`` when a bare ``flwr run`` leaves it empty).
A later evaluation replaces both files (each written atomically; ``detector.json``
last, with the SHA-256 of ``model.pt``, so a half-replaced pair is refused when
read), so the folder holds the client's detector of its latest evaluation: the final
model when the client is evaluated in the last round (``fraction-evaluate = 1``, the
default). Nothing leaves the device, and the server never sees these files; the run's
logged param ``client-model-dir`` tells ``fedpers detect --run RUN --client ID`` where
to look (``fedpers.detect``), on the machine the clients ran on.

A SuperNode's node config key ``client-model-dir`` wins over the run config (a device
decides where it keeps its files). No network, no MLflow, no server code here.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fedpers.client_state import atomic_write

MODEL_DIR_KEY = "client-model-dir"  # node config (and run config) key
MODEL_FILE = "model.pt"
META_FILE = "detector.json"
FORMAT = 1
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CLIENT = re.compile(r"^client-(\d+)$")


class ClientDetectorError(RuntimeError):
    """A client's saved detector is missing, incomplete or not the one asked for."""


def detector_root(node_config: Mapping[str, object], run_dir: str) -> Path | None:
    """The folder clients keep their detectors in, or None when the feature is off.

    Parameters
    ----------
    node_config
        The SuperNode's node config; its ``client-model-dir`` wins.
    run_dir
        The run config's ``client-model-dir`` (``""`` = off).
    """
    folder = str(node_config.get(MODEL_DIR_KEY, "") or "") or run_dir
    return Path(folder).expanduser() if folder else None


def run_key(mlflow_run_id: str, flower_run_id: int) -> str:
    """The run's folder name: its MLflow run id, else ``flwr-run-<Flower run id>``."""
    return mlflow_run_id or f"flwr-run-{int(flower_run_id)}"


def run_folder(root: Path, key: str) -> Path:
    """``root/key``; ``key`` must be a plain name (an MLflow run id, no path tricks)."""
    if not _KEY.match(key) or ".." in key:
        raise ClientDetectorError(f"invalid run id {key!r}: expected an MLflow run id "
                                  f"(letters, digits, '_', '-', '.')")
    return root / key


def client_folder(root: Path, key: str, partition_id: int) -> Path:
    """``root/key/client-<partition_id>``."""
    return run_folder(root, key) / f"client-{int(partition_id)}"


def saved_clients(folder: Path) -> list[int]:
    """Partition ids with a saved detector directly under ``folder`` (a run's folder)."""
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        m = _CLIENT.match(child.name)
        if m and (child / META_FILE).is_file():
            found.append(int(m.group(1)))
    return sorted(found)


def save_detector(folder: Path, state: Mapping[str, torch.Tensor],
                  meta: Mapping[str, Any]) -> Path:
    """Write a detector: ``state`` (a state_dict) to ``model.pt``, then ``meta`` (plus the
    format version and the model file's SHA-256) to ``detector.json``.

    Returns the folder written. Files are replaced atomically but not fsynced: the
    next evaluation writes them again.
    """
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, buf)
    blob = buf.getvalue()
    atomic_write(folder / MODEL_FILE, blob, durable=False)
    full = {"format": FORMAT, **meta, "model_sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write(folder / META_FILE, (json.dumps(full, indent=2, sort_keys=True) + "\n")
                 .encode(), durable=False)
    return folder


def load_detector(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, state_dict) of the detector saved in ``folder``.

    Raises
    ------
    ClientDetectorError
        A file is missing or unreadable, or ``model.pt`` is not the one its
        ``detector.json`` was written with.
    """
    meta_path, model_path = folder / META_FILE, folder / MODEL_FILE
    try:
        meta = json.loads(meta_path.read_text())
        blob = model_path.read_bytes()
    except FileNotFoundError as exc:
        raise ClientDetectorError(f"{exc.filename} does not exist: {folder} holds no saved "
                                  f"client detector") from exc
    except (OSError, ValueError) as exc:
        raise ClientDetectorError(f"cannot read the detector in {folder}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ClientDetectorError(f"{meta_path} is not a client detector of format {FORMAT}")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("model_sha256"):
        raise ClientDetectorError(f"{model_path} has SHA-256 {digest[:12]}..., but "
                                  f"{META_FILE} was written for another model file (a write "
                                  f"was interrupted?)")
    try:
        state = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  -- torch raises many types for foreign bytes
        raise ClientDetectorError(f"{model_path} is not a readable model weights file "
                                  f"({type(exc).__name__})") from exc
    return meta, state


__all__ = ["META_FILE", "MODEL_DIR_KEY", "MODEL_FILE", "ClientDetectorError",
           "client_folder", "detector_root", "load_detector", "run_folder", "run_key",
           "save_detector", "saved_clients"]
