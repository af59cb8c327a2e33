"""The fallback files of an MLflow outage, and sending them later (``fedpers sync-tracking``).

What an :class:`~fedpers.tracking_outbox.Outbox` could not send is left in
``<fallback-dir>/<run-id>/records-*.jsonl`` (one JSON record a line, spooled
artifacts beside it). :func:`replay` sends those records to their store in the
original order and with the original timestamps; it is idempotent (a journal left by
a crash may hold records that were sent already): MLflow drops a metric identical in
key, value, step and timestamp, params are re-logged with the same value, tags and
the status are rewritten in their original order, artifacts re-uploaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpers.checkpoint_files import FOLDER as CHECKPOINTS
from fedpers.checkpoint_files import prune
from fedpers.tracking_outbox import DEFAULT_REQUEST_TIMEOUT
from fedpers.tracking_records import (
    FALLBACK_GLOB,
    OPS,
    RECORD_VERSION,
    Record,
    http_limits,
    is_local_store,
    is_transient,
    send_to_mlflow,
    short,
)
from fedpers.tracking_store import TrackingError, connect

logger = logging.getLogger(__name__)

REFUSED_FILE = "refused.jsonl"  # records a store refused during a replay


class TrackingOutboxError(RuntimeError):
    """A fallback file cannot be read or replayed."""



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
        ``uri -> MlflowClient``; default :func:`fedpers.tracking_store.connect`,
        which fails fast on an unreachable store.

    A replayed file is deleted with its spooled artifacts. A record the store
    refuses (HTTP 4xx) is logged, moved to ``refused.jsonl`` and skipped; at a
    transient failure the replay stops with :class:`~fedpers.tracking_store.TrackingError`
    and the file keeps the unsent records, so running it again resumes. A run that
    got checkpoints (``checkpoints/`` artifacts) keeps only the newest ones, as if
    they had been saved during the run (:func:`fedpers.checkpoint_files.prune`).
    """
    connect_to = client_for or connect
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
                clients[uri] = connect_to(uri)
            record = record_of(line, file.parent)
            try:
                with http_limits(2, 30):
                    send_to_mlflow(clients[uri], line["run_id"], record)
            except Exception as exc:
                if not is_transient(exc, local_store=is_local_store(uri)):
                    refused += 1
                    logger.error("%s refused %s of run %s: %s: %s; kept in %s", uri,
                                 record.describe(), line["run_id"], type(exc).__name__,
                                 short(exc, 400), file.parent / REFUSED_FILE)
                    with open(file.parent / REFUSED_FILE, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({**line, "error": short(exc, 400)},
                                            sort_keys=True) + "\n")
                    continue
                _rewrite(file, lines[i:])
                raise TrackingError(
                    f"replaying {file} stopped at record {i + 1} of {len(lines)} "
                    f"({record.describe()}, run {line['run_id']}): {type(exc).__name__}: "
                    f"{short(exc, 400)}; the {len(lines) - i} unsent records stay in the "
                    f"file") from exc
            key = (uri, line["run_id"])
            sent[key] = sent.get(key, 0) + 1
            if record.op == "artifact" and record.data.get("artifact_path") == CHECKPOINTS:
                with_checkpoints.add(key)
        _remove(file, [record_of(line, file.parent) for line in lines])
        logger.info("replayed %d records from %s", len(lines), file)
    if with_checkpoints:
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
