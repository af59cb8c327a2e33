"""MLflow tracking, server side only: the :class:`Tracker` of one run, one batched write
per round.

Uses :class:`mlflow.tracking.MlflowClient` (explicit run ids, no global active
run), so it is safe in the ServerApp's thread. An unreachable store fails fast
when a run starts (:func:`fedpers.tracking_store.connect`); an outage *during* a
run does not stop training: writes are buffered in order and sent when the store
is back, or saved to a local fallback file at the end
(:mod:`fedpers.tracking_outbox`, :mod:`fedpers.tracking_fallback`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fedpers.tracking_fallback import replay
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
    Outbox,
    live_journals,
)
from fedpers.tracking_records import (
    FALLBACK_GLOB,
    Record,
    http_limits,
    is_local_store,
    is_transient,
    send_to_mlflow,
)
from fedpers.tracking_store import (
    PROBE_TIMEOUT,
    TrackingError,
    connect,
    ensure_experiment,
    resolve_tracking_uri,
)

logger = logging.getLogger(__name__)

# The last status each run was given by a Tracker of this process (sent or still
# buffered): what the store will say once it has everything.
_last_status: dict[str, str] = {}


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
        """An MlflowClient for ``tracking_uri``: :func:`fedpers.tracking_store.connect`."""
        return connect(tracking_uri, create=create)

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
