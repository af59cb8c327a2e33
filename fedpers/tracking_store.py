"""The MLflow store: its URI, its sqlite file and schema, experiments, and connecting.

Every client fedpers makes opens the store through :func:`connect`, which first
runs :func:`prepare_store`: a new sqlite store gets MLflow's schema under an
exclusive lock on ``<db>.lock``, so any number of fedpers processes may start
together on one store (MLflow's own schema migrations race, and can leave a store
half-migrated for good), and reading commands refuse a store file that does not
exist instead of creating an empty one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fedpers.tracking_records import http_limits, short

logger = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PROBE_TIMEOUT = 10  # seconds for the start-up probe, which is not retried
# seconds a process waits for another one that creates a sqlite store's schema (a few s)
SCHEMA_LOCK_TIMEOUT = 300.0
LOCK_SUFFIX = ".lock"  # the schema lock file, beside the sqlite file


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


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a sqlite store (``<db dir>/mlruns``).

    MLflow's own default is ``./mlruns`` of whatever folder the process runs in.
    """
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
    return None


#: MLflow's UI opens an experiment in its GenAI view (traces) unless this tag says it
#: holds model training runs; fedpers sets it on every experiment it logs into
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created (artifacts beside the store) if needed.

    The experiment carries the tag ``mlflow.experimentKind`` =
    ``custom_model_development`` (added to an existing one that lacks it), so MLflow's
    UI opens it on its runs. Safe when several processes create the same experiment
    at once: the one that loses the race finds the experiment the winner made.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    root = artifact_root(uri)
    location = f"{root}/{name}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:
        exp = client.get_experiment_by_name(name)  # made by another process meanwhile
        if exp is not None:
            return exp.experiment_id
        raise


# ------------------------------------------------------------------ sqlite stores
def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (``None`` for other stores and
    in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri[len("sqlite:///"):].split("?", 1)[0]
    if not raw or raw == ":memory:":
        return None
    return Path(raw)


@functools.cache
def _schema_head() -> tuple[str, frozenset[str]]:
    """The schema revision and the tables this MLflow's tracking store needs."""
    from mlflow.store.db.utils import _get_latest_schema_revision
    from mlflow.store.tracking.dbmodels.models import Base

    return _get_latest_schema_revision(), frozenset(Base.metadata.tables)


def _schema_state(uri: str, path: Path, wait: float = 5.0) -> str:
    """``'ready'``, ``'empty'`` (no or partial schema), ``'busy'`` (a writer held the
    file for over ``wait`` s), ``'other:<revision>'`` (another schema revision) or
    ``'torn'`` (an interrupted migration).

    Reads the file with sqlite directly, read-only: MLflow would create or migrate it.
    """
    if not path.exists():
        return "empty"
    head, needed = _schema_head()
    try:
        con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True,
                              timeout=wait)
        try:
            tables = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = None
            if "alembic_version" in tables:
                row = con.execute("SELECT version_num FROM alembic_version").fetchone()
                version = row[0] if row else None
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return "busy"
        raise TrackingError(f"cannot open the MLflow store {uri}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise TrackingError(f"cannot open the MLflow store {uri}: {path} is not an SQLite "
                            f"database ({exc})") from exc
    if any(t.startswith("_alembic_tmp_") for t in tables):
        return "torn"
    if not needed <= tables:
        return "empty"
    return "ready" if version == head else f"other:{version}"


@contextlib.contextmanager
def _schema_lock(uri: str, path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<db>.lock`` (created if needed)."""
    import fcntl

    lock = path.with_name(path.name + LOCK_SUFFIX)
    try:
        fh = open(lock, "a")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise TrackingError(f"cannot write the MLflow store {uri}: cannot create its lock "
                            f"file {lock} ({exc.strerror or exc})") from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TrackingError(f"the MLflow store {uri} is being set up by another "
                                        f"process, which has held {lock} for over "
                                        f"{timeout:.0f} s") from None
                time.sleep(0.05)
        yield
    finally:
        fh.close()  # releases the lock


def _check_writable(uri: str, path: Path) -> None:
    """Take sqlite's write lock once (and give it back) to learn the file can be written."""
    try:
        con = sqlite3.connect(str(path), timeout=1)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return  # another process is writing: it is writable
        raise TrackingError(f"cannot write the MLflow store {uri}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise TrackingError(f"cannot write the MLflow store {uri}: {exc}") from exc


def prepare_store(uri: str, *, create: bool = True,
                  lock_timeout: float = SCHEMA_LOCK_TIMEOUT) -> None:
    """Make a sqlite store safe for MLflow to open, from any number of processes.

    MLflow creates a missing schema when it opens a store, with no lock between
    processes: two processes opening a new store together race in its migrations
    and can leave it half-migrated for good. Here the schema is created under an
    exclusive ``flock`` on ``<db>.lock`` beside the file, by the first process; the
    others wait for it, then find the schema complete. A store whose schema is
    complete is not locked (reading a read-only store needs no lock file). Other
    stores (``http://``, ...) are left to :func:`connect`.

    Parameters
    ----------
    uri
        The tracking URI (resolved).
    create
        ``False`` for commands that only read: a sqlite file that does not exist is
        an error, and nothing is created.
    lock_timeout
        Seconds to wait for another process that is creating the schema.

    Raises
    ------
    TrackingError
        One line naming the store: the file or its folder does not exist, it cannot
        be written, it is not an SQLite database, or its schema is from another
        MLflow version or was left half-migrated.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    if not path.exists():
        if not create:
            raise TrackingError(f"no MLflow store at {uri}: {path} does not exist")
        if not path.parent.is_dir():
            raise TrackingError(f"cannot open MLflow store {uri}: folder {path.parent} "
                                f"does not exist")
    elif path.is_dir():
        raise TrackingError(f"cannot open MLflow store {uri}: {path} is a folder")
    state = _schema_state(uri, path)
    if state != "ready":
        with _schema_lock(uri, path, lock_timeout):
            state = _schema_state(uri, path, wait=60.0)
            if state == "empty":
                if not create:
                    raise TrackingError(f"no MLflow store at {uri}: {path} holds no "
                                        f"complete MLflow schema")
                _create_schema(uri, path)
                state = _schema_state(uri, path, wait=60.0)
    if state == "busy":
        raise TrackingError(f"the MLflow store {uri} stayed locked by another process's "
                            f"write for over 60 s")
    if state == "torn":
        raise TrackingError(f"the MLflow store {uri} was left half-migrated by an interrupted "
                            f"schema upgrade (it holds _alembic_tmp_* tables); restore it "
                            f"from a backup or use a new store")
    if state.startswith("other:"):
        raise TrackingError(f"the MLflow store {uri} has schema revision {state[6:]}, this "
                            f"MLflow needs {_schema_head()[0]}: if the store is older, back "
                            f"it up and run  mlflow db upgrade {uri}")
    if create:
        _check_writable(uri, path)


def _create_schema(uri: str, path: Path) -> None:
    """MLflow's own schema creation, run once by the process holding the lock."""
    from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine

    logger.info("creating the MLflow schema of %s", path)
    try:
        engine = create_sqlalchemy_engine(f"sqlite:///{path}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure: the store cannot be set up
        raise TrackingError(f"cannot create the MLflow schema in {uri}: "
                            f"{type(exc).__name__}: {short(exc, 400)}") from exc


def connect(tracking_uri: str, *, create: bool = False) -> Any:
    """An MlflowClient for ``tracking_uri``; fails fast if the store is unreachable.

    Every fedpers command opens its store here. A sqlite store goes through
    :func:`prepare_store` first: a sqlite file that does not exist is an error,
    unless ``create`` (commands that start runs: ``fedpers run``, ``bench``),
    which makes the store, its schema created under a lock. Raises
    :class:`TrackingError` with one line naming the store.
    """
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    prepare_store(uri, create=create)
    try:
        client = MlflowClient(tracking_uri=uri)
    except Exception as exc:  # noqa: BLE001 - e.g. an unknown URI scheme
        raise TrackingError(f"cannot use MLflow tracking URI {uri!r}: "
                            f"{type(exc).__name__}: {short(exc, 400)}") from exc
    # one quick probe, without MLflow's minutes of HTTP retries
    try:
        with http_limits(0, PROBE_TIMEOUT):
            client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        raise TrackingError(f"cannot reach the MLflow store at {uri}: "
                            f"{type(exc).__name__}: {short(exc, 400)}") from exc
    return client
