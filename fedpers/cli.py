"""The ``fedpers`` command line.

Subcommands: ``run`` (one experiment on Flower's Simulation Engine), ``bench`` (every
variant x seed of a benchmark), ``report`` (tables and plots of a sweep), ``detect``
(score rows with a trained anomaly detector), ``keys`` (every run-config key) and
``sync-tracking`` (send records saved during an MLflow outage).
:func:`fedpers.cli_parser.build_parser` holds each one's help and examples,
:mod:`fedpers.cli_commands` what each does; :func:`main` runs one and maps errors
to exit statuses.
"""

from __future__ import annotations

import logging
import sys
import traceback

from fedpers import console
from fedpers.cli_parser import build_parser
from fedpers.config import ConfigError

logger = logging.getLogger("fedpers")


class _StdoutHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stdout`` is when a record is emitted (not
    the stream of the first call: ``main`` may run more than once in one process)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    """Our progress lines on stdout; Flower's, Ray's and MLflow's only as
    :func:`fedpers.console.configure` allows (their warnings and errors always; their
    INFO lines, lifecycle lines and known warnings with ``-v``)."""
    if not logger.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s fedpers %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    console.configure(verbose)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input (a config, a file, a run id, a store):
    ``main`` prints their message as one ``error:`` line and exits with status 2. Any
    other exception is a bug: its traceback is printed and the status is 1."""
    from fedpers.bench_definition import BenchmarkError
    from fedpers.checkpoint import CheckpointError
    from fedpers.data import DataError
    from fedpers.detect_files import DetectError
    from fedpers.devices import DeviceError
    from fedpers.report_data import ReportError
    from fedpers.tracking_fallback import TrackingOutboxError
    from fedpers.tracking_store import TrackingError

    return (ConfigError, BenchmarkError, CheckpointError, DataError, DetectError, DeviceError,
            ReportError, TrackingError, TrackingOutboxError)


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (a multi-line message joined with '; ')."""
    text = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the ``fedpers`` command line; return the exit status.

    0: done. 2: bad input (a config key, a data or input file, a run id, an
    unreachable store): one line ``error: ...`` on stderr, no traceback unless
    ``-v``. 1: an unexpected exception (a bug): its traceback on stderr.
    """
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    _setup_logging(verbose)
    try:
        return int(args.fn(args))
    except Exception as exc:  # noqa: BLE001  -- sorted below: bad input or a bug
        if isinstance(exc, user_errors()):
            if verbose:
                traceback.print_exc()
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__} (a bug in fedpers, or input it does "
              f"not check yet; the traceback above says where): {one_line(exc)}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
