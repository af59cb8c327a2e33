"""Run the app on Flower's Simulation Engine (Ray) from Python.

This is what ``fedpers run`` and the benchmarks use. It runs the same ServerApp
and ClientApp that ``flwr run .`` runs, with the run config resolved by fedpers
(defaults + config file + overrides), and returns the MLflow run id.

Stopping: the first SIGINT (Ctrl-C) or SIGTERM drops the round in progress, stops
the clients and Ray, ends the MLflow run ``KILLED`` and raises
:class:`~fedpers.interrupt.RunInterrupted` (``fedpers run`` exits with 130 / 143; the
run resumes from its last checkpoint with ``fedpers run --resume RUN_ID``); a second
one exits at once. Whatever kills this process, even SIGKILL, the watchdog of
``fedpers.reaper`` stops the Ray processes it started within a second.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedpers import console, engine, interrupt
from fedpers.config import RunConfig, clients_per_round
from fedpers.tracking import Tracker
from fedpers.tracking_store import resolve_tracking_uri

logger = logging.getLogger(__name__)

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Flower runs runtime installs of app dependencies unless told not to.
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def _write_app_dir(cfg: RunConfig, folder: Path) -> None:
    """A Flower app folder whose [tool.flwr.app.config] is the resolved config.

    Flower's simulation runtime gives each simulated SuperNode the run config of
    the app folder it is pointed at; the components are the installed fedpers apps.
    """
    lines = ['[project]', 'name = "fedpers-run"', 'version = "0.0.0"', '',
             '[tool.flwr.app]', 'publisher = "fedpers"', '',
             '[tool.flwr.app.components]', 'serverapp = "fedpers.server_app:app"',
             'clientapp = "fedpers.client_app:app"', '', '[tool.flwr.app.config]']
    lines += [f"{k} = {_toml_value(v)}" for k, v in cfg.to_dict().items()]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")


def auto_packing(cfg: RunConfig, workers: int) -> RunConfig:
    """``cfg`` with the packing a run that left it to fedpers gets (``packing = "auto"``,
    ``virtual-nodes`` 0): when a round asks more clients than ``workers`` (the Ray
    workers that can train at once), one SuperNode per worker, and each SuperNode's
    share of a round's clients packed into one message (``clients-per-call``). Results
    and byte counts are those of one SuperNode per client (``tests/test_virtual_e2e.py``);
    what changes is how many messages Flower and Ray route, pickle and schedule
    (``benchmarks/overhead``). ``cfg`` as it is otherwise, and with ``checkpoint-every``
    (virtual nodes have no checkpoint and resume).
    """
    if cfg.packing != "auto" or cfg.virtual_nodes or cfg.checkpoint_every:
        return cfg
    per_call = max(clients_per_round(cfg))
    nodes = min(max(1, workers), cfg.num_clients)
    if per_call <= nodes:
        return cfg
    packed = -(-per_call // nodes)  # ceil: each node one message per call
    logger.info("packing: %d SuperNodes serve up to %d clients a call, %d per message "
                "(packing = off for one SuperNode per client)", nodes, per_call, packed)
    return cfg.replace(**{"virtual-nodes": nodes, "clients-per-call": packed})


def ray_workers(resources: Resources) -> int | None:
    """How many clients the local Ray trains at once (CPUs / CPUs per client); None on
    a Ray cluster (``ray-address``, ``RAY_ADDRESS``), whose size is not known here."""
    if resources.ray_address or os.environ.get("RAY_ADDRESS"):
        return None
    cpus = resources.num_cpus or os.cpu_count() or 1
    return max(1, int(cpus // resources.client_cpus))


def num_supernodes(cfg: RunConfig) -> int:
    """One simulated SuperNode per client, or ``virtual-nodes`` that serve them in turn
    (``fedpers.virtual``)."""
    return cfg.virtual_nodes or cfg.num_clients


@dataclass(frozen=True)
class Resources:
    """Where the simulated clients run; none of it changes a run's results.

    ``ray_address``: an existing Ray cluster to join (``"auto"``, ``"HOST:6379"``;
    ``RAY_ADDRESS`` in the environment does the same); empty: start a local Ray with
    ``num_cpus`` CPUs (default: all of this machine's). ``client_cpus``: CPUs per
    simulated client, i.e. per Ray actor; Ray sets the actor's ``OMP_NUM_THREADS`` to
    it and torch follows, so 1 gives one torch thread per client. ``client_gpus``: the
    share of a GPU per client (0.25: four clients share one GPU); ``None``: ``1 / k``
    with ``k = min(SuperNodes, CPUs)`` when CUDA is available and ``device`` is not
    ``cpu``, else 0.
    """

    num_cpus: int | None = None
    client_cpus: float = 1.0
    client_gpus: float | None = None
    ray_address: str = ""

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num-cpus must be >= 1, got {self.num_cpus}")
        if not self.client_cpus > 0:
            raise ValueError(f"client-cpus must be > 0, got {self.client_cpus}")
        if self.client_gpus is not None and not 0 <= self.client_gpus <= 1:
            raise ValueError(f"client-gpus must be in [0, 1] (a share of one GPU), "
                             f"got {self.client_gpus}")
        if self.ray_address and self.num_cpus is not None:
            raise ValueError("num-cpus is for a local Ray; a Ray cluster at ray-address "
                             "reports its own CPUs")


def backend_config(num_cpus: int | None = None, client_cpus: float = 1.0,
                   client_gpus: float = 0.0, ray_address: str = "") -> dict:
    """Ray backend settings: ``client_cpus`` CPUs (torch threads) per simulated client.

    Ray logs only its errors (``logging_level``); its workers' output is forwarded
    (``log_to_driver``, so that a client's traceback shows), filtered by
    :func:`ray_session`.

    With a cluster address (argument or ``RAY_ADDRESS``) Ray joins the cluster, whose
    nodes declare their own CPUs and GPUs (Ray refuses ``num_cpus`` then).
    """
    init: dict = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": True}
    address = ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        init["address"] = address
    else:
        init["num_cpus"] = num_cpus or os.cpu_count() or 1
        init["num_gpus"] = 0 if client_gpus == 0 else None
    return {"client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
            "init_args": init}


def client_gpu_share(cfg: RunConfig, resources: Resources) -> float:
    """The GPU share per client (:class:`Resources`)."""
    if resources.client_gpus is not None:
        return resources.client_gpus
    if cfg.device == "cpu" or not _cuda_available():
        return 0.0
    return 1.0 / max(1, min(num_supernodes(cfg), resources.num_cpus or os.cpu_count() or 1))


def run_simulation(cfg: RunConfig, *, run_name: str = "", tags: dict[str, str] | None = None,
                   client_app=None, server_app=None, num_cpus: int | None = None,
                   verbose: bool = False, resources: Resources | None = None) -> str:
    """Run one experiment in-process on the Simulation Engine; return the MLflow run id.

    ``resources`` (:class:`Resources`) places the clients (``num_cpus`` is a shortcut
    for ``Resources(num_cpus=...)``).

    The MLflow run is created (or, with ``mlflow-run-id``, reused) before anything
    starts, so an unreachable store fails fast.
    """
    from flwr.app import Context, RecordDict

    from fedpers.client_app import app as default_client_app

    # Load and partition the data first (cached: the ServerApp thread reuses it), so
    # missing files or an impossible split fail before any run is recorded.
    from fedpers.data import DataSpec, load_federated
    from fedpers.preflight import check_run
    from fedpers.server_app import app as default_server_app

    check_run(cfg, load_federated(DataSpec.from_config(cfg)))  # components fit the model
    console.flower_console(verbose)
    uri = resolve_tracking_uri(cfg.tracking_uri)
    if cfg.mlflow_run_id:
        tracker = Tracker.attach(uri, cfg.mlflow_run_id)
    else:
        tracker = Tracker.start(uri, cfg.experiment, run_name=run_name, tags=tags)
    cfg = cfg.replace(**{"tracking-uri": uri, "mlflow-run-id": tracker.run_id})
    res = resources or Resources(num_cpus=num_cpus)
    workers = ray_workers(res)
    if workers is not None:
        cfg = auto_packing(cfg, workers)
    gpus = client_gpu_share(cfg, res)
    backend = backend_config(res.num_cpus, res.client_cpus, gpus, res.ray_address)
    interrupt.reset()
    with tempfile.TemporaryDirectory(prefix="fedpers-app-") as tmp, \
            interrupt.SignalGuard() as guard:
        _write_app_dir(cfg, Path(tmp))
        context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                          run_config=cfg.to_dict())
        try:
            with ray_session(backend["init_args"], verbose=verbose):
                guard.install()  # ray.init put its own SIGTERM handler in place of ours
                interrupt.check("before the simulation started")
                engine.run_simulation_engine(
                    num_supernodes=num_supernodes(cfg),
                    client_app=client_app or default_client_app,
                    server_app=server_app or default_server_app,
                    backend_config=backend,
                    server_app_context=context,
                    app_dir=tmp,
                    verbose=verbose,
                )
            stopped = interrupt.take_interrupted()
            if stopped is not None:
                raise stopped
        except interrupt.RunInterrupted as exc:
            _stopped(exc, tracker)
            raise
        except BaseException:
            # the status the ServerApp gave the run, even if the store is down now
            if tracker.run_status() == "RUNNING":
                tracker.finish("FAILED")
            raise
    status = tracker.run_status()
    if status != "FINISHED":
        raise RuntimeError(f"the run ended with MLflow status {status}; see the log above")
    return tracker.run_id


def _stopped(exc: interrupt.RunInterrupted, tracker: Tracker) -> None:
    """A run stopped by a signal: ``KILLED`` (unless the ServerApp said so already),
    and ``exc`` names the run and its newest checkpoint."""
    from fedpers.checkpoint import CheckpointStore

    exc.run_id = exc.run_id or tracker.run_id
    if tracker.run_status() == "RUNNING":
        tracker.finish("KILLED")
    if not exc.checkpoint_round:  # stopped before the ServerApp knew its checkpoint
        try:
            exc.checkpoint_round = max(CheckpointStore(tracker).rounds(), default=0)
        except Exception as err:  # noqa: BLE001 - the message only
            logger.debug("checkpoints not listed: %s", err)


@contextmanager
def ray_session(init_args: dict, *, verbose: bool = False) -> Iterator[None]:
    """Ray for one run: started here, in the main thread, as Flower's Ray backend would
    (it leaves an initialised Ray as it is), so that the caller can set its signal
    handlers after ``ray.init``; shut down on the way out, whatever happens. A
    watchdog (:func:`start_reaper`) kills Ray's processes should this process die
    without shutting Ray down. A Ray that was running already (a sweep's, see
    :func:`sweep_ray`) is used as it is and left running.

    The workers' output still reaches this process (``log_to_driver``: a client's
    traceback is shown); unless ``verbose``, without Flower's INFO lines and the
    actors' lifecycle lines (:func:`fedpers.console.filter_worker_logs`).
    """
    import ray

    owned = not ray.is_initialized()  # else the sweep's Ray: it starts and stops it
    reaper = start_reaper() if owned else None
    try:
        if owned:
            args = {"include_dashboard": False, **init_args}
            # Ray's processes inherit the environment, not this process's sys.path
            # (what Flower's RayBackend.init_ray does too)
            paths = [*sys.path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
            pythonpath = os.pathsep.join(dict.fromkeys(p for p in paths if p))
            os.environ["PYTHONPATH"] = pythonpath
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **args)
        console.filter_worker_logs(verbose)
        yield
    finally:
        if owned and ray.is_initialized():
            ray.shutdown()
        stop_reaper(reaper)


@contextmanager
def sweep_ray(resources: Resources | None = None, *, verbose: bool = False
              ) -> Iterator[None]:
    """One Ray for every run of a sweep (``fedpers bench``): each run's
    :func:`ray_session` then finds it running and leaves it so, which saves a Ray start
    and shutdown per run. Each run still gets its own Flower simulation, client actors
    (fresh worker processes), MLflow run, seed and Context state; the GPU share per
    client is decided per run as before."""
    res = resources or Resources()
    gpus = res.client_gpus
    if gpus is None:  # Ray detects GPUs itself unless told there are none
        gpus = 0.0 if not _cuda_available() else 1.0
    init = backend_config(res.num_cpus, res.client_cpus, gpus, res.ray_address)["init_args"]
    with ray_session(init, verbose=verbose), engine.ray_kept_between_runs():
        yield


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


def start_reaper() -> subprocess.Popen | None:
    """Start the watchdog of ``fedpers.reaper`` for this process (Linux only; ``None``
    elsewhere or if it cannot start). It runs in its own session, so that a signal to
    this process group or terminal leaves it to clean up after the run."""
    if not sys.platform.startswith("linux"):
        return None
    script = Path(__file__).with_name("reaper.py")
    try:
        return subprocess.Popen([sys.executable, "-I", "-S", str(script), str(os.getpid())],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        logger.warning("no watchdog for Ray's processes (%s); should this process be "
                       "killed, they may outlive it for a while", exc)
        return None


def stop_reaper(proc: subprocess.Popen | None) -> None:
    """Tell the watchdog the run ended normally (it kills nothing) and wait for it."""
    if proc is None:
        return
    from fedpers.reaper import DONE

    try:
        assert proc.stdin is not None  # started with stdin=PIPE
        proc.stdin.write(DONE)
        proc.stdin.close()
    except OSError:  # it is gone already
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
