"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM.

``fedpers run`` runs the ServerApp in a thread of its own process, next to Flower's
Simulation Engine in the main thread. Python runs signal handlers in the main
thread only, so :class:`SignalGuard` (installed by ``fedpers.simulation``) turns the
first SIGINT or SIGTERM into a *stop request*; the ServerApp's round loop asks
:func:`check` before it logs or checkpoints a round and before it starts the next,
and :class:`fedpers.server_grid.StoppableGrid` stops waiting for replies, so the round
in progress is dropped (neither logged nor checkpointed). The run then ends with MLflow status
``KILLED`` and can be resumed from its last checkpoint (``fedpers run --resume``).

A second signal exits at once (``os._exit``): the run stays ``RUNNING`` in MLflow
(resumable all the same) and the watchdog of ``fedpers.reaper`` stops Ray's
processes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_stop = threading.Event()
_signum = 0
_interrupted: RunInterrupted | None = None


class RunInterrupted(BaseException):
    """The run stopped on a signal; its round in progress was dropped.

    A ``BaseException``, as ``KeyboardInterrupt`` is: not an error of the run, and not
    caught by code that handles errors (``except Exception``: a benchmark sweep that
    goes on past a failed run stops here). ``signum``: the signal; ``exit_code``: the
    shell's status for it (128 + signum).
    The ServerApp fills in ``run_id``, ``last_round`` (the last round logged) and
    ``checkpoint_round`` (the newest stored checkpoint, 0 if none).
    """

    def __init__(self, signum: int, where: str = "") -> None:
        self.signum = signum
        self.where = where
        self.run_id = ""
        self.last_round = 0
        self.checkpoint_round = 0
        super().__init__(f"stopped by {signal_name(signum)}" + (f" {where}" if where else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def request_stop(signum: int) -> None:
    """Ask the running round loop to stop (what the signal handler does)."""
    global _signum
    _signum = signum
    _stop.set()


def stop_requested() -> int:
    """The signal that asked for a stop, 0 if none did."""
    return _signum if _stop.is_set() else 0


def reset() -> None:
    """Forget an earlier stop request (a new run starts)."""
    global _signum, _interrupted
    _signum = 0
    _interrupted = None
    _stop.clear()


def note_interrupted(exc: RunInterrupted) -> None:
    """The ServerApp stopped on a request: it returns normally (Flower then stops the
    Simulation Engine at once) and leaves ``exc`` for :func:`take_interrupted`."""
    global _interrupted
    _interrupted = exc


def take_interrupted() -> RunInterrupted | None:
    """The :class:`RunInterrupted` the ServerApp left (once), or ``None``."""
    global _interrupted
    exc, _interrupted = _interrupted, None
    return exc


def wait_for_stop(timeout: float) -> bool:
    """Wait up to ``timeout`` s for a stop request; whether one came."""
    return _stop.wait(timeout)


def check(where: str = "") -> None:
    """Raise :class:`RunInterrupted` if a stop was requested."""
    if _stop.is_set():
        raise RunInterrupted(_signum, where)


class SignalGuard:
    """SIGINT and SIGTERM handlers that request a stop; the previous handlers come
    back on exit.

    Handlers can only be set in the main thread: elsewhere the guard does nothing. A
    signal ignored on entry stays ignored (a background job of a non-interactive shell
    ignores SIGINT, so that Ctrl-C in the terminal leaves it alone).
    :meth:`install` sets them again (Ray's ``ray.init`` replaces the SIGTERM handler
    with its own ``sys.exit``).
    """

    def __init__(self, signals: Iterable[int] = SIGNALS) -> None:
        self.signals = tuple(signals)
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.getsignal(s) for s in self.signals}
            self.install()
        else:
            logger.debug("not the main thread: SIGINT / SIGTERM keep their handlers")
        return self

    def install(self) -> None:
        for s, before in self.previous.items():
            if before is not signal.SIG_IGN:
                signal.signal(s, self._handle)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    @staticmethod
    def _handle(signum: int, frame: FrameType | None) -> None:
        name = signal_name(signum)
        if stop_requested():
            logger.warning("%s again: exiting now (the run stays RUNNING in MLflow and "
                           "can still be resumed from its last checkpoint)", name)
            logging.shutdown()
            os._exit(128 + signum)
        request_stop(signum)
        logger.warning("%s: stopping the run (the round in progress is dropped); "
                       "send it again to exit at once", name)
