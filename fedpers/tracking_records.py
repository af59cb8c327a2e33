"""One MLflow write as a :class:`Record`, how it is sent, and how a failure is read.

A :class:`fedpers.tracking.Tracker` turns every write (a ``log_batch`` of metrics,
params or tags, an artifact upload, the final run status) into a :class:`Record`;
:func:`send_to_mlflow` performs one. :func:`is_transient` says whether a failed send
means "store unreachable, try again later" (the outbox then buffers) or a refusal;
:func:`http_limits` bounds MLflow's HTTP retries and time-out for a block. Records
are also the lines of the fallback files (``records-*.jsonl``, :data:`RECORD_VERSION`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORD_VERSION = 1
FALLBACK_GLOB = "records-*.jsonl"  # the fallback (journal) files of a run's folder
OPS = ("batch", "artifact", "terminate")


@dataclass(frozen=True)
class Record:
    """One MLflow write, JSON-serialisable.

    ``op`` is ``"batch"`` (``metrics``: ``[key, value, timestamp_ms, step]`` rows,
    ``params`` and ``tags``: ``[key, value]`` rows), ``"artifact"`` (``path``: a local
    file, ``artifact_path``: folder in the run or ``None``) or ``"terminate"``
    (``status``, ``end_time`` in ms).
    """

    op: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown record op {self.op!r}; valid: {OPS}")

    @classmethod
    def batch(cls, metrics: list[tuple[str, float, int, int]] | None = None,
              params: list[tuple[str, str]] | None = None,
              tags: list[tuple[str, str]] | None = None) -> Record:
        return cls("batch", {"metrics": [list(m) for m in metrics or []],
                             "params": [list(p) for p in params or []],
                             "tags": [list(t) for t in tags or []]})

    @classmethod
    def artifact(cls, path: str | Path, artifact_path: str | None = None) -> Record:
        return cls("artifact", {"path": str(path), "artifact_path": artifact_path})

    @classmethod
    def terminate(cls, status: str, end_time: int | None = None) -> Record:
        return cls("terminate", {"status": status,
                                 "end_time": int(time.time() * 1000) if end_time is None
                                 else int(end_time)})

    def steps(self) -> set[int]:
        """The metric steps (rounds) this record carries."""
        return {int(m[3]) for m in self.data.get("metrics", [])} if self.op == "batch" else set()

    def describe(self) -> str:
        if self.op == "batch":
            d = self.data
            return (f"batch of {len(d['metrics'])} metrics, {len(d['params'])} params, "
                    f"{len(d['tags'])} tags")
        if self.op == "artifact":
            return f"artifact {Path(self.data['path']).name}"
        return f"run status {self.data['status']}"


def send_to_mlflow(client: Any, run_id: str, record: Record) -> None:
    """Perform ``record`` on run ``run_id`` through an :class:`~mlflow.MlflowClient`."""
    d = record.data
    if record.op == "batch":
        from mlflow.entities import Metric, Param, RunTag

        client.log_batch(run_id,
                         metrics=[Metric(k, float(v), int(ts), int(s))
                                  for k, v, ts, s in d["metrics"]],
                         params=[Param(k, str(v)) for k, v in d["params"]],
                         tags=[RunTag(k, str(v)) for k, v in d["tags"]])
    elif record.op == "artifact":
        client.log_artifact(run_id, d["path"], d.get("artifact_path"))
    else:
        client.set_terminated(run_id, status=d["status"], end_time=d.get("end_time"))


def is_local_store(uri: str) -> bool:
    """A store in a file on this machine (sqlite, file store), not behind a network."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_transient(exc: BaseException, *, local_store: bool = False) -> bool:
    """Whether ``exc`` means "store unreachable, try again later".

    Remote stores: connection errors and time-outs, HTTP 5xx and 429 (MLflow
    reports a refused connection as an ``INTERNAL_ERROR``, i.e. 500) and an
    unreachable database are transient; HTTP 4xx answers (invalid value, unknown
    run) and anything else (a bug) are not. A local store (``local_store``: a
    sqlite file) does not go away and come back: only a locked (busy) database is
    transient there; a read-only or missing file raises.
    """
    if local_store:
        text = " ".join(str(e) for e in _chain(exc)).lower()
        return "database is locked" in text or "database is busy" in text
    from mlflow.exceptions import MlflowException  # a dependency; imported when needed

    if isinstance(exc, MlflowException):
        code = exc.get_http_status_code()
        return code >= 500 or code == 429
    try:
        import requests

        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            code = exc.response.status_code
            return code >= 500 or code == 429
        if isinstance(exc, requests.RequestException):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        import sqlalchemy.exc

        if isinstance(exc, sqlalchemy.exc.OperationalError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


# ------------------------------------------------------------ HTTP limits
_env_lock = threading.Lock()
_env_users = 0
_env_saved: dict[str, str | None] = {}


@contextlib.contextmanager
def http_limits(max_retries: int, timeout: int) -> Iterator[None]:
    """MLflow's HTTP client with ``max_retries`` retries and ``timeout`` s per request.

    MLflow reads ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT``
    on every request (defaults 7 retries with exponential back-off, 120 s: minutes
    against a dead server) and has no per-client setting, so they are set for the
    duration of the block. The variables are process-wide: nested and concurrent
    blocks share one saved copy and the last one out restores it; an MLflow call of
    another thread inside the window gets the same short limits.
    """
    global _env_users
    values = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(int(max_retries)),
              "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout)))}
    with _env_lock:
        if _env_users == 0:
            _env_saved.clear()
            _env_saved.update({k: os.environ.get(k) for k in values})
        _env_users += 1
        os.environ.update(values)
    try:
        yield
    finally:
        with _env_lock:
            _env_users -= 1
            if _env_users == 0:
                for k, v in _env_saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v



def short(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message (its type when empty), cut to ``limit``."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."

