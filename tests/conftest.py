"""Shared fixtures. Tests never touch the network; MLflow stores live in tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task identity, so that tests can make Flower Messages outside a running app
    (Flower reads it from process globals; restored after the test). Use it with
    ``pytestmark = pytest.mark.usefixtures("task_identity")``."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def metric_history(tracking_uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a run as {key: [(step, value), ...]} read back from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
            for k in run.data.metrics}


def load_script(path: Path, name: str):
    """Import a benchmark script (not a package module) by its file path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
