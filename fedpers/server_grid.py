"""The grid the server's round loop talks to: the Simulation Engine's tuned and
stoppable grid, and the virtual-nodes grid over a few SuperNodes."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.serverapp import Grid

from fedpers import engine
from fedpers.errors import ConfigError
from fedpers.grid_view import GridView
from fedpers.interrupt import check, wait_for_stop
from fedpers.virtual import VirtualGrid, VirtualNodeParams

#: seconds between the Simulation Engine grid's pulls for replies (Flower's default 0.1 s
#: is dead time at the end of every call, benchmarks/overhead/README.md)
SIMULATION_PULL_INTERVAL = 0.02


class StoppableGrid(GridView):
    """A Grid whose ``send_and_receive`` stops waiting once a stop is requested.

    It pushes the messages and pulls the replies the way Flower's in-memory grid does
    (every ``pull_interval`` s of the wrapped grid, until every reply is in or
    ``timeout`` s pass), checking for a stop request between pulls: it raises
    :class:`RunInterrupted` within one pull interval. Everything else is the wrapped
    grid's.
    """

    def send_and_receive(self, messages: Iterable[Any], *,
                         timeout: float | None = None) -> list[Any]:
        check("before sending messages")
        pending = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        interval = float(getattr(self._grid, "pull_interval", 0.1))
        replies: list[Any] = []
        while pending:
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (end is not None and time.monotonic() >= end):
                break
            check("while waiting for replies")
            wait_for_stop(interval)
        return replies


def tune_simulation_grid(grid: Grid) -> Grid:
    """On the Simulation Engine, pull replies every ``SIMULATION_PULL_INTERVAL`` s: a
    call then ends within 20 ms of its last reply instead of up to 100 ms. (Each pull
    looks the call's message ids up in the in-memory LinkState, ~0.15 ms of the
    driver's CPU: 10 ms between pulls cost 1.5% of a core through a whole round.)

    Returns the grid the ServerApp uses: there, a :class:`StoppableGrid`
    that stops waiting for replies when ``fedpers run`` is interrupted (SIGINT,
    SIGTERM: the ServerApp runs in a thread of that process); elsewhere ``grid``."""
    if engine.lower_pull_interval(grid, SIMULATION_PULL_INTERVAL):
        return StoppableGrid(grid)
    return grid


def virtual_grid(params: VirtualNodeParams, grid: Grid, run_id: str) -> Grid:
    """The grid the round loop uses: with ``virtual-nodes``, a :class:`VirtualGrid`
    (``fedpers.virtual``) over the Simulation Engine's few SuperNodes."""
    if not params.virtual_nodes:
        return grid
    base = grid.inner if isinstance(grid, StoppableGrid) else grid
    if not engine.is_simulation_grid(base):
        raise ConfigError(f"run-config key 'virtual-nodes' = {params.virtual_nodes} works on "
                          f"the Simulation Engine only (this ServerApp runs on a "
                          f"{type(base).__name__}); in deployment each SuperNode is one "
                          f"client: set virtual-nodes = 0")
    return VirtualGrid(grid, params.num_clients, run_id, params.clients_per_call)
