"""A write-behind outbox for MLflow writes: tracking survives a store outage mid-run.

Every write of a :class:`fedpers.tracking.Tracker` (a ``log_batch`` of metrics,
params or tags, an artifact upload, the final run status) is a
:class:`~fedpers.tracking_records.Record`. While the store answers, a record is sent
at once. When a send fails with a *transient* error (connection refused or reset, a
time-out, an HTTP 5xx or 429, a locked database), the outbox switches to buffering:
that record and every later one queue up **in order**, and the queue is retried at
the next write once the retry interval has passed (doubling after each failed
attempt, up to ``max_retry_interval``), so a dead server costs a training round at
most one short request. Artifacts are copied into a spool folder when queued,
because callers usually hand over temporary files.

Queued records are also appended at once to a journal, the local *fallback* file
``<fallback-dir>/<run-id>/records-<time>-<id>.jsonl`` (one JSON record a line,
spooled artifacts beside it), deleted when the queue has gone through. At the end of
the run :meth:`Outbox.drain` waits a bounded time for the store to come back; what is
still unsent then stays in the file, which
:func:`~fedpers.tracking_fallback.replay` (``fedpers sync-tracking``) sends to the
store later, in the original order and with the original timestamps. If the process
dies during an outage, the journal is still there.

A *permanent* error (HTTP 4xx: an invalid value, a deleted run) is raised by the
call that sent the record directly; for a queued record, whose call returned long
ago, it is logged and the record kept for the fallback file, so training is not
stopped by it. The module talks to MLflow only through the ``send`` callable, so the
buffering logic is tested without a server.
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
from collections.abc import Callable, Mapping
from pathlib import Path

from fedpers.tracking_records import RECORD_VERSION, Record, is_transient, short

logger = logging.getLogger(__name__)

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
                       type(exc).__name__, short(exc), self.retry_interval,
                       self.max_retry_interval)

    def _still_down(self, exc: BaseException) -> None:
        self._attempts += 1
        wait = min(self.retry_interval * 2 ** (self._attempts - 1), self.max_retry_interval)
        self._next_try = self._clock() + wait
        logger.info("%s still unreachable (%s); %d tracking records buffered",
                    self.describe, short(exc), len(self._queue))

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
                       callback, type(exc).__name__, short(exc))


def live_journals() -> set[Path]:
    """Journal files of outboxes alive in this process (not leftovers of another)."""
    return {box._journal for box in list(_live) if box._journal is not None}


@atexit.register
def _save_at_exit() -> None:
    """Records of a tracker never finished (e.g. a benchmark's parent run) are not lost."""
    for box in list(_live):
        if box.pending and not box.flush():
            path = box.write_fallback()
            if path is not None:
                logger.warning("unsent tracking records written to %s; send them with: "
                               "fedpers sync-tracking %s", path, path.parent)

