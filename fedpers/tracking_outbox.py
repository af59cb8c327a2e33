"""A write-behind outbox for MLflow writes: tracking survives a store outage mid-run.

Every write of a :class:`fedpers.tracking.Tracker` (a ``log_batch`` of metrics,
params or tags, an artifact upload, the final run status) is a :class:`Record`.
While the store answers, a record is sent at once, as before. When a send fails
with a *transient* error (connection refused or reset, a time-out, an HTTP 5xx or
429, a locked database), the outbox switches to buffering: that record and every
later one queue up **in order**, and the queue is retried at the next write once
the retry interval has passed (doubling after each failed attempt, up to
``max_retry_interval``), so a dead server costs a training round at most one
short request. Artifacts are copied into a spool folder when queued, because
callers usually hand over temporary files.

Queued records are also appended at once to a journal, the local *fallback*
file ``<fallback-dir>/<run-id>/records-<time>-<id>.jsonl`` (one JSON record a
line, spooled artifacts beside it), deleted when the queue has gone through. At
the end of the run :meth:`Outbox.drain` waits a bounded time for the store to
come back; what is still unsent then stays in the file, which :func:`replay`
(``fedpers sync-tracking``) sends to the store later, in the original order and
with the original timestamps. If the process dies during an outage, the journal
is still there. Replaying is idempotent (a journal left by a crash may hold
records that were sent already): MLflow drops a metric identical in key, value,
step and timestamp, params are re-logged with the same value, tags and the
status are rewritten in their original order, artifacts re-uploaded.

A *permanent* error (HTTP 4xx: an invalid value, a deleted run) is raised by the
call that sent the record directly, as before; for a queued record, whose call
returned long ago, it is logged and the record kept for the fallback file, so
training is not stopped by it. The module talks to MLflow only through the ``send`` callable and
:func:`send_to_mlflow`, so the buffering logic is tested without a server.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
FALLBACK_GLOB = "records-*.jsonl"
REFUSED_FILE = "refused.jsonl"  # records a store refused during a replay
OPS = ("batch", "artifact", "terminate")

# Operational knobs (not run-config keys: they do not change what a run computes,
# so they stay out of the config and its digest); read when a Tracker is made.
ENV_FALLBACK_DIR = "FEDPERS_TRACKING_FALLBACK_DIR"
ENV_FLUSH_TIMEOUT = "FEDPERS_TRACKING_FLUSH_TIMEOUT"
ENV_RETRY_INTERVAL = "FEDPERS_TRACKING_RETRY_INTERVAL"
ENV_REQUEST_TIMEOUT = "FEDPERS_TRACKING_REQUEST_TIMEOUT"
DEFAULT_FALLBACK_DIR = "mlflow-fallback"  # relative to the working directory
DEFAULT_FLUSH_TIMEOUT = 60.0
DEFAULT_RETRY_INTERVAL = 5.0
DEFAULT_MAX_RETRY_INTERVAL = 60.0
DEFAULT_REQUEST_TIMEOUT = 5


class TrackingOutboxError(RuntimeError):
    """A fallback file cannot be read or replayed."""


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
    transient there; a read-only or missing file raises as before.
    """
    if local_store:
        text = " ".join(str(e) for e in _chain(exc)).lower()
        return "database is locked" in text or "database is busy" in text
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow is a dependency
        MlflowException = ()  # type: ignore[assignment]  # noqa: N806
    if MlflowException and isinstance(exc, MlflowException):
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


# ---------------------------------------------------------------- outbox
_live: weakref.WeakSet[Outbox] = weakref.WeakSet()


class Outbox:
    """Ordered write-behind buffer in front of one MLflow run.

    Parameters
    ----------
    send
        Performs one record; raises on failure (see :func:`is_transient`).
    spool_dir
        This run's fallback folder: the journal of queued records and the spooled
        artifacts. Created only when something is queued; what was made for an
        outage is removed once it is over.
    header
        Fields written into every fallback line (``run_id``, ``tracking_uri``).
    retry_interval, max_retry_interval
        Seconds before the first retry after a failure, doubled after each failed
        attempt up to ``max_retry_interval``.
    transient
        Which send errors mean "retry later" (default :func:`is_transient`).
    clock, sleep
        Injected for tests (``time.monotonic`` and ``time.sleep``).
    """

    def __init__(self, send: Callable[[Record], None], spool_dir: Path, *,
                 header: Mapping[str, str] | None = None, describe: str = "the MLflow store",
                 retry_interval: float = DEFAULT_RETRY_INTERVAL,
                 max_retry_interval: float = DEFAULT_MAX_RETRY_INTERVAL,
                 transient: Callable[[BaseException], bool] = is_transient,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if retry_interval < 0 or max_retry_interval < retry_interval:
            raise ValueError(f"need 0 <= retry_interval ({retry_interval}) <= "
                             f"max_retry_interval ({max_retry_interval})")
        self._send = send
        self._transient = transient
        self.spool_dir = Path(spool_dir)
        self.header = dict(header or {})
        self.describe = describe
        self.retry_interval = float(retry_interval)
        self.max_retry_interval = float(max_retry_interval)
        self._clock = clock
        self._sleep = sleep
        self._queue: deque[Record] = deque()
        self._failed: list[tuple[Record, str]] = []  # permanent errors of queued records
        self._lock = threading.RLock()
        self._attempts = 0  # failed attempts in a row
        self._next_try = 0.0
        self._down_since: float | None = None
        self._spooled = 0
        self._made_dirs: set[Path] = set()
        self._journal: Path | None = None
        self.sent_late = 0  # records sent after being queued
        self.fallback_path: Path | None = None
        self._when_sent: list[Callable[[], None]] = []
        _live.add(self)

    # ------------------------------------------------------------ state
    @property
    def pending(self) -> int:
        """Records not (yet) in the store: queued, plus queued ones it refused."""
        with self._lock:
            return len(self._queue) + len(self._failed)

    @property
    def buffering(self) -> bool:
        with self._lock:
            return bool(self._queue)

    def pending_steps(self) -> list[int]:
        with self._lock:
            recs = [*self._queue, *(r for r, _ in self._failed)]
        return sorted(set().union(*(r.steps() for r in recs))) if recs else []

    # ------------------------------------------------------------ writing
    def submit(self, record: Record) -> None:
        """Send ``record`` now, or queue it behind earlier unsent ones.

        Raises the error of a direct send that is not transient.
        """
        with self._lock:
            if not self._queue:
                try:
                    self._send(record)
                    return
                except Exception as exc:
                    if not self._transient(exc):
                        raise
                    self._enqueue(record)
                    self._went_down(exc)
                    return
            self._enqueue(record)
            if self._clock() >= self._next_try:
                self._flush_once()

    def _enqueue(self, record: Record) -> None:
        spooled = self._spool(record)
        if spooled is None:
            return
        self._queue.append(spooled)
        try:
            if self._journal is None:
                self._mkdirs(self.spool_dir)
                fd, name = tempfile.mkstemp(
                    prefix=f"records-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".jsonl",
                    dir=self.spool_dir)
                os.close(fd)
                self._journal = Path(name)
            with open(self._journal, "a", encoding="utf-8") as fh:
                fh.write(self._line(spooled) + "\n")
        except OSError as exc:  # the queue in memory still holds it
            logger.error("cannot journal a tracking record in %s (%s); it is lost if the "
                         "process dies before the store is back", self.spool_dir, exc)

    def when_sent(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once everything queued now has been sent (at once when
        nothing is queued). It runs in the thread whose write emptied the queue; an
        error it raises is logged. Registering the same callback twice calls it once;
        records that end in the fallback file do not call it."""
        with self._lock:
            if self._queue:
                if callback not in self._when_sent:
                    self._when_sent.append(callback)
                return
        _call_quietly(callback)

    def flush(self) -> bool:
        """Try once to send everything queued; ``True`` when the queue is empty."""
        with self._lock:
            if self._queue:
                self._flush_once()
            return not self._queue

    def drain(self, timeout: float) -> bool:
        """Retry the queue for up to ``timeout`` s; ``True`` when all was sent."""
        with self._lock:
            if not self._queue:
                return True
            deadline = self._clock() + max(0.0, timeout)
            logger.warning("waiting up to %.0f s for %s to come back (%d tracking records "
                           "pending)", timeout, self.describe, len(self._queue))
            while True:
                if self._flush_once():
                    return True
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._sleep(min(max(self.retry_interval, 0.05), left))

    def _flush_once(self) -> bool:
        """Send queued records in order until one fails transiently; ``True`` if all sent."""
        sent = 0
        while self._queue:
            record = self._queue[0]
            try:
                self._send(record)
            except Exception as exc:  # noqa: BLE001 - classified below
                if self._transient(exc):
                    self._still_down(exc)
                    return False
                self._queue.popleft()
                self._failed.append((record, f"{type(exc).__name__}: {exc}"))
                logger.error("%s refused a buffered %s: %s: %s; it is kept for the fallback "
                             "file", self.describe, record.describe(), type(exc).__name__, exc)
                continue
            self._queue.popleft()
            self._unspool(record)
            sent += 1
        self.sent_late += sent
        self._close_journal()
        if self._down_since is not None:
            logger.warning("%s is back after %.0f s: %d buffered tracking records written",
                           self.describe, self._clock() - self._down_since, sent)
        self._down_since = None
        self._attempts = 0
        self._next_try = 0.0
        callbacks, self._when_sent = self._when_sent, []
        for callback in callbacks:
            _call_quietly(callback)
        return True

    def _went_down(self, exc: BaseException) -> None:
        self._down_since = self._clock()
        self._attempts = 1
        self._next_try = self._down_since + self.retry_interval
        logger.warning("%s is unreachable (%s: %s); training goes on and tracking records "
                       "are buffered (retried every %.0f-%.0f s)", self.describe,
                       type(exc).__name__, _short(exc), self.retry_interval,
                       self.max_retry_interval)

    def _still_down(self, exc: BaseException) -> None:
        self._attempts += 1
        wait = min(self.retry_interval * 2 ** (self._attempts - 1), self.max_retry_interval)
        self._next_try = self._clock() + wait
        logger.info("%s still unreachable (%s); %d tracking records buffered",
                    self.describe, _short(exc), len(self._queue))

    # ------------------------------------------------------------ spool
    def _spool(self, record: Record) -> Record | None:
        """Queue-safe copy: an artifact's file is copied into the spool folder."""
        if record.op != "artifact" or record.data.get("spooled"):
            return record
        src = Path(record.data["path"])
        self._spooled += 1
        folder = self.spool_dir / "artifacts"
        try:
            self._mkdirs(folder)
            dest_dir = Path(tempfile.mkdtemp(prefix=f"{self._spooled:05d}-", dir=folder))
            dest = dest_dir / src.name
            shutil.copy2(src, dest)
        except OSError as exc:
            logger.error("cannot keep artifact %s for a later upload (%s); it is not logged",
                         src, exc)
            return None
        return Record("artifact", {**record.data, "path": str(dest), "spooled": True})

    def _mkdirs(self, folder: Path) -> None:
        missing = [d for d in (folder, *folder.parents) if not d.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self._made_dirs.update(missing)

    def _unspool(self, record: Record) -> None:
        if record.op == "artifact" and record.data.get("spooled"):
            shutil.rmtree(Path(record.data["path"]).parent, ignore_errors=True)

    def _tidy(self) -> None:
        """Remove the folders made for an outage, deepest first, once empty."""
        for made in sorted(self._made_dirs, key=lambda d: len(d.parts), reverse=True):
            with contextlib.suppress(OSError):
                made.rmdir()  # only when empty

    def _line(self, record: Record, error: str = "") -> str:
        data = dict(record.data)
        if record.op == "artifact" and data.get("spooled"):
            # relative to the file, so the folder can be moved before a replay
            data["path"] = Path(data["path"]).relative_to(self.spool_dir).as_posix()
        line = {"v": RECORD_VERSION, **self.header, "op": record.op, **data}
        if error:
            line["error"] = error
        return json.dumps(line, sort_keys=True)

    def _rewrite_journal(self, items: list[tuple[Record, str]]) -> None:
        assert self._journal is not None
        tmp = self._journal.with_suffix(".tmp")
        tmp.write_text("".join(self._line(r, e) + "\n" for r, e in items), encoding="utf-8")
        os.replace(tmp, self._journal)

    def _close_journal(self) -> None:
        """The queue went through: drop the journal (keep only records the store refused)."""
        if self._journal is None:
            return
        try:
            if self._failed:
                self._rewrite_journal(self._failed)
                return
            self._journal.unlink(missing_ok=True)
        except OSError as exc:
            logger.error("cannot update the tracking journal %s: %s", self._journal, exc)
            return
        self._journal = None
        self._tidy()

    # ------------------------------------------------------------ fallback
    def write_fallback(self) -> Path | None:
        """Leave every unsent record in the journal file; its path, or ``None``.

        The queue is emptied: the records now live in the file, for :func:`replay`.
        """
        with self._lock:
            items = [(r, "") for r in self._queue] + self._failed
            if not items:
                return None
            try:
                if self._journal is None:  # it could not be created: try once more
                    self._mkdirs(self.spool_dir)
                    fd, name = tempfile.mkstemp(prefix="records-", suffix=".jsonl",
                                                dir=self.spool_dir)
                    os.close(fd)
                    self._journal = Path(name)
                self._rewrite_journal(items)  # exactly what is unsent, in order
            except OSError as exc:
                logger.error("cannot save %d unsent tracking records in %s: %s; they are "
                             "lost", len(items), self.spool_dir, exc)
                return None
            path, self._journal = self._journal, None
            self._queue.clear()
            self._failed.clear()
            self._when_sent.clear()
            self.fallback_path = path
            return path


def _call_quietly(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception as exc:  # noqa: BLE001 - a follow-up never stops the writes
        logger.warning("%r failed after the buffered tracking records were sent: %s: %s",
                       callback, type(exc).__name__, _short(exc))


def live_journals() -> set[Path]:
    """Journal files of outboxes alive in this process (not leftovers of another)."""
    return {box._journal for box in list(_live) if box._journal is not None}


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


@atexit.register
def _save_at_exit() -> None:
    """Records of a tracker never finished (e.g. a benchmark's parent run) are not lost."""
    for box in list(_live):
        if box.pending and not box.flush():
            path = box.write_fallback()
            if path is not None:
                logger.warning("unsent tracking records written to %s; send them with: "
                               "fedpers sync-tracking %s", path, path.parent)


# ---------------------------------------------------------------- replay
def fallback_files(path: str | Path) -> list[Path]:
    """The record files under ``path`` (a file, a run folder or a fallback root), oldest first."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(p.glob(FALLBACK_GLOB)) or sorted(p.glob(f"*/{FALLBACK_GLOB}"))
    raise TrackingOutboxError(f"no fallback records at {p}: neither a {FALLBACK_GLOB} file nor "
                              f"a folder holding one")


def read_fallback(path: Path) -> list[dict[str, Any]]:
    """The records of one fallback file, checked."""
    rows = path.read_text(encoding="utf-8").splitlines()
    lines = []
    for i, text in enumerate(rows, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as exc:
            if i == len(rows):
                logger.warning("%s: the last line is cut short (the process died while "
                               "writing it); it is skipped", path)
                break
            raise TrackingOutboxError(f"{path}:{i}: not a JSON record ({exc})") from exc
        if line.get("v") != RECORD_VERSION or line.get("op") not in OPS or "run_id" not in line:
            raise TrackingOutboxError(f"{path}:{i}: not a fedpers tracking record "
                                      f"(version {line.get('v')!r}, op {line.get('op')!r})")
        lines.append(line)
    return lines


def record_of(line: Mapping[str, Any], folder: Path) -> Record:
    """The record of one fallback line; spooled artifact paths are relative to ``folder``."""
    skip = {"v", "op", "run_id", "tracking_uri", "error"}
    data = {k: v for k, v in line.items() if k not in skip}
    if line["op"] == "artifact" and data.get("spooled"):
        data["path"] = str(folder / data["path"])
    return Record(line["op"], data)


@dataclass(frozen=True)
class ReplayResult:
    """What :func:`replay` did: records sent per ``(tracking uri, run id)``, files read,
    and the records the store refused (kept in ``refused.jsonl`` beside their file)."""

    sent: dict[tuple[str, str], int]
    files: tuple[Path, ...]
    refused: int = 0


def replay(path: str | Path, tracking_uri: str | None = None,
           client_for: Callable[[str], Any] | None = None) -> ReplayResult:
    """Send the records of fallback file(s) under ``path`` to their store, in order.

    Parameters
    ----------
    path
        A record file, a run's fallback folder, or the fallback root.
    tracking_uri
        Send to this store instead of the one each record names.
    client_for
        ``uri -> MlflowClient``; default :meth:`fedpers.tracking.Tracker.connect`,
        which fails fast on an unreachable store.

    A replayed file is deleted with its spooled artifacts. A record the store
    refuses (HTTP 4xx) is logged, moved to ``refused.jsonl`` and skipped; at a
    transient failure the replay stops with :class:`~fedpers.tracking.TrackingError`
    and the file keeps the unsent records, so running it again resumes. A run that
    got checkpoints (``checkpoints/`` artifacts) keeps only the newest ones, as if
    they had been saved during the run (:func:`fedpers.checkpoint.prune`).
    """
    from fedpers.checkpoint import FOLDER as CHECKPOINTS
    from fedpers.tracking import Tracker, TrackingError

    connect = client_for or Tracker.connect
    files = fallback_files(path)
    sent: dict[tuple[str, str], int] = {}
    refused = 0
    clients: dict[str, Any] = {}
    with_checkpoints: set[tuple[str, str]] = set()
    for file in files:
        lines = read_fallback(file)
        for i, line in enumerate(lines):
            uri = tracking_uri or line.get("tracking_uri", "")
            if not uri:
                raise TrackingOutboxError(f"{file}: a record names no tracking URI; pass one")
            if uri not in clients:
                clients[uri] = connect(uri)
            record = record_of(line, file.parent)
            try:
                with http_limits(2, 30):
                    send_to_mlflow(clients[uri], line["run_id"], record)
            except Exception as exc:
                if not is_transient(exc, local_store=is_local_store(uri)):
                    refused += 1
                    logger.error("%s refused %s of run %s: %s: %s; kept in %s", uri,
                                 record.describe(), line["run_id"], type(exc).__name__,
                                 _short(exc, 400), file.parent / REFUSED_FILE)
                    with open(file.parent / REFUSED_FILE, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({**line, "error": _short(exc, 400)},
                                            sort_keys=True) + "\n")
                    continue
                _rewrite(file, lines[i:])
                raise TrackingError(
                    f"replaying {file} stopped at record {i + 1} of {len(lines)} "
                    f"({record.describe()}, run {line['run_id']}): {type(exc).__name__}: "
                    f"{_short(exc, 400)}; the {len(lines) - i} unsent records stay in the "
                    f"file") from exc
            key = (uri, line["run_id"])
            sent[key] = sent.get(key, 0) + 1
            if record.op == "artifact" and record.data.get("artifact_path") == CHECKPOINTS:
                with_checkpoints.add(key)
        _remove(file, [record_of(line, file.parent) for line in lines])
        logger.info("replayed %d records from %s", len(lines), file)
    if with_checkpoints:
        from fedpers.checkpoint import prune

        for uri, run_id in sorted(with_checkpoints):
            with http_limits(0, DEFAULT_REQUEST_TIMEOUT):
                prune(clients[uri], run_id, uri)
    return ReplayResult(sent=sent, files=tuple(files), refused=refused)


def _remove(file: Path, records: list[Record]) -> None:
    """Delete a replayed file, its spooled artifacts, and its folders once empty."""
    file.unlink()
    for record in records:
        if record.op == "artifact" and record.data.get("spooled"):
            shutil.rmtree(Path(record.data["path"]).parent, ignore_errors=True)
    for folder in (file.parent / "artifacts", file.parent):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def _rewrite(file: Path, lines: list[dict[str, Any]]) -> None:
    tmp = file.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines),
                   encoding="utf-8")
    os.replace(tmp, file)
