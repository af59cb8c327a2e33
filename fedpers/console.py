"""What a ``fedpers`` command prints: fedpers' own lines, not the frameworks' chatter.

By default a run prints one fedpers line per round. Flower's INFO lines (``configure_train:
Sampled ...``), its DEBUG dumps (backend config), the lifecycle lines of Ray's client actors
(``Manually terminating ClientAppActor``) and Ray's start-up tips show only with
``verbose``; Flower's and Ray's warnings and errors (a failed client, a timeout, a worker's
traceback) always do. Where they come from:

- Flower logs everything through the logger ``flwr``, whose console handler (stderr,
  colored) is set up when ``flwr`` is imported: :class:`FlowerFilter` sits on that logger.
- Ray forwards its workers' stdout and stderr to this process (``log_to_driver``); the
  lines a Flower client actor logs arrive there already formatted:
  :func:`filter_worker_logs` drops the lifecycle ones and keeps the rest (tracebacks).
- Ray's ``FutureWarning`` tip at ``ray.init`` and SQLAlchemy's deprecation warning while
  MLflow creates a store are Python warnings: :func:`configure` ignores those two.

This module is the one place that touches Ray's private log forwarding.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from fedpers import engine

logger = logging.getLogger(__name__)

#: Lines that every run prints and that say nothing about this run (any level).
LIFECYCLE = (
    re.compile(r"Manually terminating \w+"),
)
#: Python warnings that every run (or every new store) raises: (message regex, category).
KNOWN_WARNINGS = (
    (r"Tip: In future versions of Ray", FutureWarning),
    (r"The ``noload`` loader strategy is deprecated", DeprecationWarning),
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: A line of Flower's console format below WARNING, as a Ray worker forwards it
#: (``INFO :      configure_train: ...``, maybe colored, maybe with a timestamp).
_FLOWER_QUIET_LINE = re.compile(r"^(INFO|DEBUG)\s+(\d{4}-\d\d-\d\d [\d:,.]+)?\s*:\s")
_RAY_HANDLER = "ray_print_logs"


def is_lifecycle(text: str) -> bool:
    """Whether ``text`` (a log message or a forwarded line) is a known lifecycle line."""
    plain = _ANSI.sub("", text)
    return any(p.search(plain) for p in LIFECYCLE)


class FlowerFilter(logging.Filter):
    """On the ``flwr`` logger: below WARNING only when verbose; never a lifecycle line.

    Parameters
    ----------
    verbose
        Let every record through (Flower's own handler level decides).
    """

    def __init__(self, verbose: bool = False) -> None:
        super().__init__("flwr")
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if record.levelno < logging.WARNING:
            return False
        return not is_lifecycle(record.getMessage())


def _flower_filter() -> FlowerFilter:
    """The one :class:`FlowerFilter` on the ``flwr`` logger (added on first use)."""
    flwr_logger = logging.getLogger("flwr")
    for f in flwr_logger.filters:
        if isinstance(f, FlowerFilter):
            return f
    f = FlowerFilter()
    flwr_logger.addFilter(f)
    return f


def configure(verbose: bool) -> None:
    """Set what Flower, Ray, MLflow and Python warnings may print in this process.

    Needs no import of Flower or Ray (a filter on the ``flwr`` logger holds across
    Flower's import); call it again to change the verbosity.

    Parameters
    ----------
    verbose
        Show Flower's INFO and DEBUG lines, the lifecycle lines and the known warnings.
    """
    _flower_filter().verbose = verbose
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    global _ignore_warnings
    _ignore_warnings = not verbose
    if not verbose:
        # MLflow sets its loggers' level when it is imported (later, in most commands)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        _ignore_known_warnings()


_ignore_warnings = False


def _ignore_known_warnings() -> None:
    """Put the filters of :data:`KNOWN_WARNINGS` first (again: importing Flower's
    simulation puts its own ``once`` filter for every DeprecationWarning in front)."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def flower_console(verbose: bool) -> None:
    """Flower's console lines: below WARNING only when ``verbose`` (:class:`FlowerFilter`),
    no ANSI colors when its stream is not a terminal.

    Call it after importing ``flwr.simulation`` (its console handler exists from then
    on, and its warnings filter is in place).
    """
    _flower_filter().verbose = verbose
    if _ignore_warnings:
        _ignore_known_warnings()
    for handler in engine.flower_console_handlers():
        stream = handler.stream
        handler.colored = bool(getattr(stream, "isatty", lambda: False)())


def keep_worker_line(line: str) -> bool:
    """Whether a line a Ray worker printed is shown without ``verbose``: not a lifecycle
    line, not one of Flower's INFO/DEBUG lines; everything else (warnings, errors,
    tracebacks, a client's own prints) is."""
    plain = _ANSI.sub("", line)
    return not (is_lifecycle(plain) or _FLOWER_QUIET_LINE.match(plain))


def filter_worker_logs(verbose: bool) -> bool:
    """Filter the workers' lines Ray forwards to this process (call after ``ray.init``).

    Ray drops its forwarding handler at ``ray.shutdown``, and with it this filter.

    Parameters
    ----------
    verbose
        Leave the forwarding as it is.

    Returns
    -------
    bool
        Whether the filter is in place (``False`` when verbose, when Ray forwards
        nothing, or when this Ray lays out its forwarding differently).
    """
    if verbose:
        return False
    return engine.filter_ray_worker_output(_RAY_HANDLER, _FilteredHandler, _FilteredHandler)


class _FilteredHandler:
    """Ray's forwarding handler, given each batch without the lines to hide."""

    def __init__(self, handle: Callable[[dict], None]) -> None:
        self.handle = handle

    def __call__(self, data: dict) -> None:
        lines = [ln for ln in data.get("lines", []) if keep_worker_line(ln)]
        if lines:
            self.handle({**data, "lines": lines})


def interactive() -> bool:
    """Whether stdout and stderr are both a terminal (a progress bar may redraw)."""
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


def command(name: str) -> str:
    """How to run the console script ``name`` from this shell, for a printed hint.

    ``name`` itself when ``PATH`` finds the one installed beside this Python; else
    that one's path (relative to the working directory when below it, e.g.
    ``.venv/bin/mlflow``: a venv that is not activated); else ``name``.
    """
    here = Path(sys.executable).parent / name
    if not here.exists():
        return name
    found = shutil.which(name)
    if found and Path(found).resolve() == here.resolve():
        return name
    cwd = Path.cwd()
    path = str(here.absolute())
    if cwd != Path(cwd.anchor) and here.absolute().is_relative_to(cwd):
        rel = here.absolute().relative_to(cwd)
        path = str(rel) if len(rel.parts) > 1 else f"./{rel}"
    return shlex.quote(path)
