"""Checkpoints in a store that fails: a store error is never read as "no checkpoint",
and old checkpoints that could not be deleted, or that arrived late after an outage,
are pruned later (fedpers.checkpoint.CheckpointStore)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow.exceptions import MlflowException
from store_template import fresh_store

from fedpers.checkpoint import Checkpoint, CheckpointStore, resume_config
from fedpers.cli import main
from fedpers.tracking import Tracker
from fedpers.tracking_fallback import replay
from fedpers.tracking_store import TrackingError


class FlakyClient:
    """A real MlflowClient whose methods named in ``failing`` raise, as when the
    store goes away; counts the calls."""

    def __init__(self, real) -> None:
        self._real = real
        self.failing: dict[str, Callable[[], BaseException]] = {}
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str):
        attr = getattr(self._real, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls[name] += 1
            if name in self.failing:
                raise self.failing[name]()
            return attr(*args, **kwargs)

        return call


def refused() -> requests.ConnectionError:
    return requests.ConnectionError("Connection refused")


def locked() -> MlflowException:
    """How a busy sqlite store fails (transient: the outbox queues and retries)."""
    exc = MlflowException("(raised as a result of Query-invoked autoflush)")
    exc.__cause__ = RuntimeError("(sqlite3.OperationalError) database is locked")
    return exc


@pytest.fixture
def caplog_fedpers(caplog, monkeypatch):
    # fedpers' CLI stops its logger propagating to the root, where caplog listens
    monkeypatch.setattr(logging.getLogger("fedpers"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="fedpers")
    return caplog


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A run in a new sqlite store, its client wrapped in a FlakyClient."""
    monkeypatch.setenv("FEDPERS_TRACKING_RETRY_INTERVAL", "0")
    monkeypatch.setenv("FEDPERS_TRACKING_FALLBACK_DIR", str(tmp_path / "fallback"))
    uri = fresh_store(tmp_path / "store")
    tracker = Tracker.start(uri, "ckpt")
    tracker.client = FlakyClient(tracker.client)
    return tracker


def _save(store: CheckpointStore, *rounds: int) -> None:
    for rnd in rounds:
        store.save(Checkpoint(round=rnd, meta={"config": {"task": "digits"},
                                               "mlflow_run_id": store.tracker.run_id},
                              arrays={"global/w": np.full(2, rnd, np.float32)}))


def test_a_store_error_while_listing_is_not_no_checkpoint(run):
    store = CheckpointStore(run)
    _save(store, 1, 2)
    run.client.failing["list_artifacts"] = refused
    pattern = (rf"cannot list the checkpoints of MLflow run {run.run_id}: the MLflow store at "
               rf"sqlite:///.*mlflow\.db failed \(ConnectionError: Connection refused\)")
    with pytest.raises(TrackingError, match=pattern):
        store.latest()
    del run.client.failing["list_artifacts"]
    assert store.latest().round == 2


def test_a_store_error_while_reading_does_not_fall_back_to_an_older_one(run, caplog_fedpers):
    store = CheckpointStore(run)
    _save(store, 1, 2)
    run.client.failing["download_artifacts"] = refused
    with pytest.raises(TrackingError, match=r"cannot read the checkpoint of round 2 .*"
                                            r"Connection refused"):
        store.latest()
    assert run.client.calls["download_artifacts"] == 1  # round 1 was not tried instead
    assert "unusable" not in caplog_fedpers.text


def test_cli_resume_reports_the_store_error(run, capsys, monkeypatch):
    store = CheckpointStore(run)
    _save(store, 1)
    from mlflow.tracking import MlflowClient

    def down(self, *args, **kwargs):
        raise refused()

    monkeypatch.setattr(MlflowClient, "list_artifacts", down)
    with pytest.raises(TrackingError, match="cannot list the checkpoints"):
        resume_config(run.tracking_uri, run.run_id)
    assert main(["run", "--resume", run.run_id, "--tracking-uri", run.tracking_uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot list the checkpoints") and "\n" not in err
    assert "no usable checkpoint" not in err


def test_a_failed_delete_is_a_warning_and_is_retried_at_the_next_save(run, caplog_fedpers,
                                                                       monkeypatch):
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    store = CheckpointStore(run)
    _save(store, 1, 2)
    real_delete = LocalArtifactRepository.delete_artifacts

    def broken(self, artifact_path=None):
        raise OSError("[Errno 5] Input/output error")

    monkeypatch.setattr(LocalArtifactRepository, "delete_artifacts", broken)
    _save(store, 3)
    assert store.rounds() == [1, 2, 3]
    warned = [r for r in caplog_fedpers.records if r.levelno == logging.WARNING
              and "checkpoint of round 1" in r.getMessage()]
    assert len(warned) == 1 and "not deleted" in warned[0].getMessage()
    assert "Input/output error" in warned[0].getMessage()
    monkeypatch.setattr(LocalArtifactRepository, "delete_artifacts", real_delete)
    _save(store, 4)
    assert store.rounds() == [3, 4]


def test_a_listing_error_while_pruning_does_not_stop_the_save(run, caplog_fedpers):
    store = CheckpointStore(run)
    _save(store, 1, 2)
    run.client.failing["list_artifacts"] = refused
    _save(store, 3)  # stored; pruning is put off
    assert "old checkpoints of MLflow run" in caplog_fedpers.text
    del run.client.failing["list_artifacts"]
    _save(store, 4)
    assert store.rounds() == [3, 4]


def _outage_during_saves(run: Tracker) -> CheckpointStore:
    """Rounds 1-2 saved; the store is away while rounds 3-5 are saved (queued)."""
    store = CheckpointStore(run)
    _save(store, 1, 2)
    for name in ("log_artifact", "set_terminated", "log_batch"):
        run.client.failing[name] = locked
    _save(store, 3, 4, 5)
    assert run.buffering and store.rounds() == [1, 2]
    return store


def test_checkpoints_sent_after_an_outage_are_pruned(run):
    store = _outage_during_saves(run)
    run.client.failing.clear()
    run.finish("FINISHED")  # the store is back: the queue goes through
    assert not run.buffering
    assert store.rounds() == [4, 5]


def test_checkpoints_replayed_from_the_fallback_file_are_pruned(run):
    store = _outage_during_saves(run)
    run.flush_timeout = 0.0
    run.finish("FINISHED")  # still away at the end: everything goes to the fallback file
    assert run.fallback_path is not None and store.rounds() == [1, 2]
    res = replay(Path(run.fallback_path).parent)  # fedpers sync-tracking
    assert res.sent == {(run.tracking_uri, run.run_id): 4}
    assert store.rounds() == [4, 5]
    assert store.latest().round == 5
