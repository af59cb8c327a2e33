"""MLflow tracking, server side only. One batched write per round.

Uses :class:`mlflow.tracking.MlflowClient` (explicit run ids, no global active
run), so it is safe in the ServerApp's thread.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


_PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or the run cannot be used."""


def resolve_tracking_uri(uri: str) -> str:
    """``''`` means ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def version_tags() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    tags = {"git_commit": _git_commit()}
    for pkg in ("fedpers", "flwr", "torch", "mlflow"):
        try:
            tags[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            tags[f"version.{pkg}"] = "unknown"
    return tags


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a sqlite store (``<db dir>/mlruns``).

    MLflow's own default is ``./mlruns`` of whatever folder the process runs in.
    """
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
    return None


def ensure_experiment(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created (artifacts beside the store) if needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(uri)
    location = f"{root}/{name}" if root else None
    return client.create_experiment(name, artifact_location=location)


class Tracker:
    """One MLflow run of one federated experiment."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)

    # ------------------------------------------------------------- lifecycle
    @classmethod
    def connect(cls, tracking_uri: str) -> Any:
        """An MlflowClient for ``tracking_uri``; fails fast if the store is unreachable."""
        from mlflow.tracking import MlflowClient

        uri = resolve_tracking_uri(tracking_uri)
        if uri.startswith("sqlite:///"):
            parent = Path(uri[len("sqlite:///"):]).parent
            if not parent.is_dir():
                raise TrackingError(f"cannot open MLflow store {uri}: folder {parent} "
                                    f"does not exist")
        client = MlflowClient(tracking_uri=uri)
        # one quick probe, without MLflow's minutes of HTTP retries
        saved = {k: os.environ.get(k) for k in _PROBE_ENV}
        os.environ.update(_PROBE_ENV)
        try:
            client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure means unreachable
            raise TrackingError(f"cannot reach the MLflow store at {uri}: "
                                f"{type(exc).__name__}: {exc}") from exc
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return client

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, run_name: str = "",
              tags: Mapping[str, str] | None = None) -> Tracker:
        """Create a new run (and the experiment if needed)."""
        client = cls.connect(tracking_uri)
        uri = resolve_tracking_uri(tracking_uri)
        exp_id = ensure_experiment(client, uri, experiment)
        all_tags = {**version_tags(), **(tags or {})}
        if run_name:
            all_tags["mlflow.runName"] = run_name
        run = client.create_run(exp_id, tags=all_tags)
        logger.info("MLflow run %s in experiment %r at %s", run.info.run_id, experiment, uri)
        return cls(uri, run.info.run_id)

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str) -> Tracker:
        """Log into an existing run (created by ``fedpers run`` or a benchmark)."""
        client = cls.connect(tracking_uri)
        try:
            client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(f"MLflow run {run_id!r} not found at "
                                f"{resolve_tracking_uri(tracking_uri)}: {exc}") from exc
        tr = cls(resolve_tracking_uri(tracking_uri), run_id)
        tr.client.set_terminated(run_id, status="RUNNING")
        return tr

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    # --------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """All of a round's metrics in one call."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_json(self, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(obj, indent=2, sort_keys=True))
            self.client.log_artifact(self.run_id, str(path))

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)
