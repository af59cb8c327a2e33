"""Run the app on Flower's Simulation Engine (Ray) from Python.

This is what ``fedpers run`` and the benchmarks use. It runs the same ServerApp
and ClientApp that ``flwr run .`` runs, with the run config resolved by fedpers
(defaults + config file + overrides), and returns the MLflow run id.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedpers.config import RunConfig
from fedpers.tracking import Tracker, resolve_tracking_uri

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
    if cfg.device == "cpu":
        return 0.0
    try:
        import torch
    except ImportError:  # pragma: no cover
        return 0.0
    if not torch.cuda.is_available():
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
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from fedpers.client_app import app as default_client_app

    # Load and partition the data first (cached: the ServerApp thread reuses it), so
    # missing files or an impossible split fail before any run is recorded.
    from fedpers.data import DataSpec, load_federated
    from fedpers.server_app import app as default_server_app

    load_federated(DataSpec.from_config(cfg))
    uri = resolve_tracking_uri(cfg.tracking_uri)
    if cfg.mlflow_run_id:
        tracker = Tracker.attach(uri, cfg.mlflow_run_id)
    else:
        tracker = Tracker.start(uri, cfg.experiment, run_name=run_name, tags=tags)
    cfg = cfg.replace(**{"tracking-uri": uri, "mlflow-run-id": tracker.run_id})
    res = resources or Resources(num_cpus=num_cpus)
    gpus = client_gpu_share(cfg, res)
    with tempfile.TemporaryDirectory(prefix="fedpers-app-") as tmp:
        _write_app_dir(cfg, Path(tmp))
        context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                          run_config=cfg.to_dict())
        try:
            _run_simulation(
                num_supernodes=num_supernodes(cfg),
                exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                client_app=client_app or default_client_app,
                server_app=server_app or default_server_app,
                backend_config=backend_config(res.num_cpus, res.client_cpus, gpus,
                                              res.ray_address),
                server_app_context=context,
                app_dir=tmp,
                is_app=True,
                verbose_logging=verbose,
            )
        except BaseException:
            # the status the ServerApp gave the run, even if the store is down now
            if tracker.run_status() == "RUNNING":
                tracker.finish("FAILED")
            raise
    status = tracker.run_status()
    if status != "FINISHED":
        raise RuntimeError(f"the run ended with MLflow status {status}; see the log above")
    return tracker.run_id
