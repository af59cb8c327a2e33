"""The ServerApp: parse the run config, open the MLflow run, run the round loop.

The round loop is ``fedpers.server_loop`` (``Experiment``); a training round's steps
after the replies are in are ``fedpers.server_pipeline``; evaluation is
``fedpers.server_eval``; checkpoint and resume glue ``fedpers.server_checkpoint``;
the grid helpers ``fedpers.server_grid``.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from threadpoolctl import threadpool_limits

from fedpers import client_state
from fedpers.checkpoint import CheckpointStore
from fedpers.config import RunConfig, parse_run_config
from fedpers.heap import frozen_heap
from fedpers.interrupt import RunInterrupted, note_interrupted
from fedpers.run_params import applicable_params, bookkeeping_tags
from fedpers.server_grid import SIMULATION_PULL_INTERVAL, tune_simulation_grid, virtual_grid
from fedpers.server_loop import MAX_FAILED_ROUNDS, Experiment, RoundLog
from fedpers.tracking import Tracker
from fedpers.virtual import VirtualNodeParams, remove_states

logger = logging.getLogger("fedpers")

__all__ = ["MAX_FAILED_ROUNDS", "SIMULATION_PULL_INTERVAL", "Experiment", "RoundLog", "app",
           "open_tracker", "tune_simulation_grid", "virtual_grid"]


def open_tracker(cfg: RunConfig) -> Tracker:
    """Attach to the run named in the config, or start a new one."""
    if cfg.mlflow_run_id:
        return Tracker.attach(cfg.tracking_uri, cfg.mlflow_run_id)
    return Tracker.start(cfg.tracking_uri, cfg.experiment)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = parse_run_config(context.run_config)
    grid = tune_simulation_grid(grid)
    tracker = open_tracker(cfg)
    try:
        # a run with a checkpoint resumes from it (fedpers run --resume, or flwr run with
        # its mlflow-run-id); its params are logged already
        resume = CheckpointStore(tracker).resume_point(cfg) if cfg.mlflow_run_id else None
        if resume is None:
            # only the keys that apply to this config (fedpers.run_params); where the
            # run is recorded is a tag; config.json keeps every key
            tracker.log_params(applicable_params(cfg))
            tracker.set_tags({"fedpers.config_digest": cfg.digest(), **bookkeeping_tags(cfg)})
        grid = virtual_grid(VirtualNodeParams.from_config(cfg), grid, tracker.run_id)
        experiment = Experiment(cfg, grid, tracker, resume=resume)
        # numpy's BLAS threads spin for a while after each call (the update norms'
        # dot products): on the Simulation Engine that took ~10% of a core from the
        # clients' training (benchmarks/overhead/README.md); the server's vectors are
        # small, one thread loses nothing, and the sums no longer depend on the core count
        # ... and the rounds' full garbage collections skip what lives for the whole run
        # (0.3 s every few rounds otherwise, fedpers.heap)
        with threadpool_limits(limits=1, user_api="blas"), frozen_heap():
            experiment.run()
    except RunInterrupted as exc:  # SIGINT / SIGTERM (fedpers.interrupt): resumable
        exc.run_id = tracker.run_id
        tracker.finish("KILLED")
        # returned, not raised: Flower waits 3 s for the context of a ServerApp that
        # raised before it stops; fedpers.simulation raises it in the main thread
        note_interrupted(exc)
        return
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        if cfg.virtual_nodes:  # simulation: the clients' disk is this machine's
            remove_states(client_state.state_root({}, cfg.client_state_dir), tracker.run_id)
    tracker.finish("FINISHED")
