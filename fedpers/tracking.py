"""MLflow tracking, server side only. One batched write per round.

Uses :class:`mlflow.tracking.MlflowClient` (explicit run ids, no global active
run), so it is safe in the ServerApp's thread. An unreachable store fails fast
when a run starts; an outage *during* a run does not stop training: writes are
buffered in order and sent when the store is back, or saved to a local fallback
file at the end (:mod:`fedpers.tracking_outbox`).

Every client fedpers makes opens the store through :meth:`Tracker.connect`, which
first runs :func:`prepare_store`: a new sqlite store gets MLflow's schema under an
exclusive lock on ``<db>.lock``, so any number of fedpers processes may start
together on one store (MLflow's own schema migrations race, and can leave a store
half-migrated for good), and reading commands refuse a store file that does not
exist instead of creating an empty one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fedpers.tracking_outbox import (
    DEFAULT_FALLBACK_DIR,
    DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_MAX_RETRY_INTERVAL,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRY_INTERVAL,
    ENV_FALLBACK_DIR,
    ENV_FLUSH_TIMEOUT,
    ENV_REQUEST_TIMEOUT,
    ENV_RETRY_INTERVAL,
    FALLBACK_GLOB,
    Outbox,
    Record,
    http_limits,
    is_local_store,
    is_transient,
    live_journals,
    replay,
    send_to_mlflow,
)

logger = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


PROBE_TIMEOUT = 10  # seconds for the start-up probe, which is not retried
# seconds a process waits for another one that creates a sqlite store's schema (a few s)
SCHEMA_LOCK_TIMEOUT = 300.0
LOCK_SUFFIX = ".lock"  # the schema lock file, beside the sqlite file
# The last status each run was given by a Tracker of this process (sent or still
# buffered): what the store will say once it has everything.
_last_status: dict[str, str] = {}


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


#: MLflow's UI opens an experiment in its GenAI view (traces) unless this tag says it
#: holds model training runs; fedpers sets it on every experiment it logs into
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


#: MLflow 3.17's UI picks its GenAI or model-training view from this URL parameter
#: (else from the browser's last choice, GenAI by default), not from the tag above
UI_VIEW = "workflowType=machine_learning"


def ui_url(base: str, experiment_id: str, run_id: str = "") -> str:
    """The MLflow UI page of an experiment's runs (or of one run), in the
    model-training view. ``base``: where ``mlflow ui`` serves, e.g.
    ``http://127.0.0.1:5000``."""
    page = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{base.rstrip('/')}/{page}?{UI_VIEW}"


def metric_chart_url(base: str, experiment_id: str, run_ids: list[str], key: str) -> str:
    """The MLflow UI page that plots metric ``key`` of ``run_ids`` against the round."""
    def enc(obj: Any) -> str:
        return quote(json.dumps(obj), safe="")

    return (f"{base.rstrip('/')}/#/metric?runs={enc(run_ids)}&metric={enc(key)}"
            f"&experiments={enc([experiment_id])}&plot_metric_keys={enc([key])}"
            f"&plot_layout={enc({})}&x_axis=step&y_axis_scale=linear&line_smoothness=1"
            f"&show_point=true&deselected_curves={enc([])}"
            f"&last_linear_y_axis_range={enc([])}")


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
    stores (``http://``, ...) are left to :meth:`Tracker.connect`.

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
                            f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TrackingError(f"{name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise TrackingError(f"{name}={raw!r} must be >= 0 seconds")
    return value


class Tracker:
    """One MLflow run of one federated experiment.

    Every write goes through an :class:`~fedpers.tracking_outbox.Outbox`: sent at
    once while the store answers; during an outage buffered in order (artifacts
    copied aside) and retried, each attempt limited to one HTTP request of at most
    ``request_timeout`` s; :meth:`finish` waits up to ``flush_timeout`` s for the
    store, then writes what is still unsent to
    ``<fallback_dir>/<run_id>/records-*.jsonl`` and logs how to send it later
    (``fedpers sync-tracking``).

    Parameters
    ----------
    tracking_uri, run_id
        The store and the (existing) run.
    client
        An :class:`~mlflow.tracking.MlflowClient` (or a stand-in for tests);
        default one for ``tracking_uri``.
    fallback_dir
        Root of the fallback store; default ``$FEDPERS_TRACKING_FALLBACK_DIR``,
        else ``./mlflow-fallback``.
    flush_timeout, retry_interval, request_timeout
        Seconds; defaults ``$FEDPERS_TRACKING_FLUSH_TIMEOUT`` (60),
        ``$FEDPERS_TRACKING_RETRY_INTERVAL`` (5, doubled per failed attempt up to
        60) and ``$FEDPERS_TRACKING_REQUEST_TIMEOUT`` (5).
    """

    def __init__(self, tracking_uri: str, run_id: str, *, client: Any = None,
                 fallback_dir: str | Path | None = None, flush_timeout: float | None = None,
                 retry_interval: float | None = None,
                 request_timeout: float | None = None) -> None:
        if client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = client
        root = fallback_dir or os.environ.get(ENV_FALLBACK_DIR) or DEFAULT_FALLBACK_DIR
        self.fallback_dir = Path(root).resolve() / run_id
        self.flush_timeout = (_env_number(ENV_FLUSH_TIMEOUT, DEFAULT_FLUSH_TIMEOUT)
                              if flush_timeout is None else float(flush_timeout))
        retry = (_env_number(ENV_RETRY_INTERVAL, DEFAULT_RETRY_INTERVAL)
                 if retry_interval is None else float(retry_interval))
        self.request_timeout = (_env_number(ENV_REQUEST_TIMEOUT, DEFAULT_REQUEST_TIMEOUT)
                                if request_timeout is None else float(request_timeout))
        self.outbox = Outbox(self._send, self.fallback_dir,
                             header={"run_id": run_id, "tracking_uri": tracking_uri},
                             describe=f"the MLflow store at {tracking_uri}",
                             retry_interval=retry,
                             max_retry_interval=max(retry, DEFAULT_MAX_RETRY_INTERVAL),
                             transient=functools.partial(
                                 is_transient, local_store=is_local_store(tracking_uri)))
        _last_status.setdefault(run_id, "RUNNING")

    def _send(self, record: Record) -> None:
        # no MLflow retries: the outbox retries, so a dead server costs one request
        with self.quick_requests():
            send_to_mlflow(self.client, self.run_id, record)

    # ------------------------------------------------------------- lifecycle
    @classmethod
    def connect(cls, tracking_uri: str, *, create: bool = False) -> Any:
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
                                f"{type(exc).__name__}: {_first_line(exc)}") from exc
        # one quick probe, without MLflow's minutes of HTTP retries
        try:
            with http_limits(0, PROBE_TIMEOUT):
                client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure means unreachable
            raise TrackingError(f"cannot reach the MLflow store at {uri}: "
                                f"{type(exc).__name__}: {_first_line(exc)}") from exc
        return client

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, run_name: str = "",
              tags: Mapping[str, str] | None = None) -> Tracker:
        """Create a new run (and the experiment, and a sqlite store, if needed)."""
        client = cls.connect(tracking_uri, create=True)
        uri = resolve_tracking_uri(tracking_uri)
        all_tags = {**version_tags(), **(tags or {})}
        if run_name:
            all_tags["mlflow.runName"] = run_name
        with http_limits(0, PROBE_TIMEOUT):  # part of the start: fails fast
            exp_id = ensure_experiment(client, uri, experiment)
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
        tr.send_leftovers()
        with http_limits(0, PROBE_TIMEOUT):  # part of the start: fails fast
            tr.client.set_terminated(run_id, status="RUNNING")
        _last_status[run_id] = "RUNNING"
        return tr

    def finish(self, status: str = "FINISHED") -> None:
        """Set the run's final status, after everything buffered.

        Waits up to ``flush_timeout`` s for an unreachable store; then the unsent
        records (this status included) go to the fallback file, with a warning
        saying where and how to send them.
        """
        _last_status[self.run_id] = status
        self.outbox.submit(Record.terminate(status))
        if self.outbox.drain(self.flush_timeout):
            return
        steps = self.outbox.pending_steps()
        count = self.outbox.pending
        path = self.outbox.write_fallback()
        rounds = f", metrics of steps {_ranges(steps)}" if steps else ""
        logger.warning(
            "the MLflow store at %s did not come back within %.0f s: %d tracking records of "
            "run %s (status %s%s) are saved in %s. When the store is reachable, send them "
            "with:  fedpers sync-tracking %s   (add --tracking-uri URI for another store)",
            self.tracking_uri, self.flush_timeout, count, self.run_id, status, rounds, path,
            self.fallback_dir)

    def run_status(self) -> str:
        """The run's status as the store will have it once it has every write.

        The last status a Tracker of this process gave the run (sent, buffered or
        in the fallback file), else what the store reports now.
        """
        if self.run_id in _last_status:
            return _last_status[self.run_id]
        try:
            with http_limits(0, PROBE_TIMEOUT):
                return self.client.get_run(self.run_id).info.status
        except Exception as exc:
            if is_transient(exc, local_store=is_local_store(self.tracking_uri)):
                raise TrackingError(f"cannot read the status of run {self.run_id} from "
                                    f"{self.tracking_uri}: {exc}") from exc
            raise

    def send_leftovers(self) -> int:
        """Send this run's records left in the fallback folder by an earlier process.

        A process that died during an outage, or ended before the store came back,
        leaves its unsent records there; a run that continues (``fedpers run
        --resume``, ``mlflow-run-id``) sends them first, so its metrics, checkpoints
        and status are complete and in order. Returns the number of records sent;
        raises :class:`TrackingError` if the store fails meanwhile.
        """
        if not self.fallback_dir.is_dir():
            return 0
        mine = live_journals()
        files = [f for f in sorted(self.fallback_dir.glob(FALLBACK_GLOB)) if f not in mine]
        sent = 0
        for file in files:
            logger.warning("sending the tracking records of run %s left in %s by an earlier "
                           "process", self.run_id, file)
            res = replay(file, tracking_uri=self.tracking_uri,
                         client_for=lambda uri: self.client)
            sent += sum(res.sent.values())
        return sent

    @property
    def buffering(self) -> bool:
        """Whether the store is unreachable now (writes are being queued).

        Code that reads the store directly (``self.client``) can skip optional
        reads meanwhile, or wrap them in :meth:`quick_requests`.
        """
        return self.outbox.buffering

    def quick_requests(self) -> Any:
        """Context manager: MLflow calls inside make one HTTP request of at most
        ``request_timeout`` s, with no retries (MLflow's default is minutes of retries)."""
        return http_limits(0, max(1, round(self.request_timeout)))

    @property
    def fallback_path(self) -> Path | None:
        """The fallback file written by :meth:`finish`, if the store was unreachable."""
        return self.outbox.fallback_path

    # --------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.outbox.submit(Record.batch(params=items[i:i + 100]))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.outbox.submit(Record.batch(tags=[(k, str(v)) for k, v in tags.items()]))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """All of a round's metrics in one call (kept in order during an outage)."""
        ts = int(time.time() * 1000)
        items = [(k, float(v), ts, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.outbox.submit(Record.batch(metrics=items[i:i + 1000]))

    def log_json(self, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(obj, indent=2, sort_keys=True))
            self.log_file(path)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file; during an outage a copy is kept and uploaded later."""
        self.outbox.submit(Record.artifact(path, artifact_path))


def _ranges(steps: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``'1-3, 5'``."""
    spans: list[list[int]] = []
    for s in steps:
        if spans and s == spans[-1][1] + 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
