"""The grid the server's round loop talks to: the Simulation Engine's tuned and
stoppable grid, and the virtual-nodes grid over a few SuperNodes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpers import engine
from fedpers.errors import ConfigError
from fedpers.interrupt import StoppableGrid
from fedpers.virtual import VirtualGrid

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from fedpers.config import RunConfig

#: seconds between the Simulation Engine grid's pulls for replies (Flower's default 0.1 s
#: is dead time at the end of every call, benchmarks/overhead/README.md)
SIMULATION_PULL_INTERVAL = 0.02


def tune_simulation_grid(grid: Grid) -> Grid | StoppableGrid:
    """On the Simulation Engine, pull replies every ``SIMULATION_PULL_INTERVAL`` s: a
    call then ends within 20 ms of its last reply instead of up to 100 ms. (Each pull
    looks the call's message ids up in the in-memory LinkState, ~0.15 ms of the
    driver's CPU: 10 ms between pulls cost 1.5% of a core through a whole round.)

    Returns the grid the ServerApp uses: there, a :class:`~fedpers.interrupt.StoppableGrid`
    that stops waiting for replies when ``fedpers run`` is interrupted (SIGINT,
    SIGTERM: the ServerApp runs in a thread of that process); elsewhere ``grid``."""
    if engine.lower_pull_interval(grid, SIMULATION_PULL_INTERVAL):
        return StoppableGrid(grid)
    return grid


def virtual_grid(cfg: RunConfig, grid: Grid | StoppableGrid,
                 run_id: str) -> Grid | StoppableGrid | VirtualGrid:
    """The grid the round loop uses: with ``virtual-nodes``, a :class:`VirtualGrid`
    (``fedpers.virtual``) over the Simulation Engine's few SuperNodes."""
    if not cfg.virtual_nodes:
        return grid
    base = grid.inner if isinstance(grid, StoppableGrid) else grid
    if not engine.is_simulation_grid(base):
        raise ConfigError(f"run-config key 'virtual-nodes' = {cfg.virtual_nodes} works on "
                          f"the Simulation Engine only (this ServerApp runs on a "
                          f"{type(base).__name__}); in deployment each SuperNode is one "
                          f"client: set virtual-nodes = 0")
    return VirtualGrid(grid, cfg.num_clients, run_id, cfg.clients_per_call)
