"""The one place that touches a dependency's private or internal API.

Flower 1.42 (the Message API), PyTorch and Ray each have a public surface that
fedpers uses everywhere: ``flwr.app``, ``flwr.serverapp`` (and ``.strategy``),
``flwr.clientapp``, the top level of ``flwr.common`` and ``flwr.simulation``;
``torch`` and ``torch.nn``; ``ray.init``. A few things fedpers needs are only
reachable below that surface. Each is wrapped here in a small fedpers-named
function, so that an upgrade of Flower, torch or Ray touches this file only
(``tests/test_engine.py`` fails when any other module of ``fedpers``,
``strategies`` or ``clients`` imports a private path).

What is wrapped, and why it is not public:

=================================  ==========================================================
fedpers name                       wraps
=================================  ==========================================================
:func:`run_simulation_engine`      ``flwr.simulation.run_simulation._run_simulation``: the
                                   public ``run_simulation`` passes an empty run config and
                                   no ServerApp Context; the private one takes both.
:func:`ray_kept_between_runs`      ``flwr.server.superlink.fleet.vce.backend.raybackend.
                                   RayBackend.terminate``: it shuts Ray down after every
                                   run; a sweep keeps one Ray for all its runs.
:func:`is_simulation_grid`,        ``flwr.superlink.grid.inmemory_grid.InMemoryGrid`` (the
:func:`lower_pull_interval`        Simulation Engine's grid) and its ``pull_interval``: not
                                   exported; the public ``Grid`` says nothing of polling.
:func:`wire_size`                  ``flwr.supercore.inflatable.inflatable_object.
                                   get_all_nested_objects`` and ``Array``'s private chunk
                                   cache ``_chunks``: how Flower splits a message into the
                                   objects it ships (exact wire bytes).
:func:`recorddict_to_bytes`,       ``flwr.common.serde`` and ``flwr.proto.recorddict_pb2``:
:func:`recorddict_from_bytes`      Flower's own protobuf form of a RecordDict (client state
                                   on disk, byte for byte as Flower ships it).
:data:`NUMPY_STYPE`                ``flwr.common.constant.SType.NUMPY``: the serialisation
                                   tag of an ``Array`` written with ``np.save``.
:data:`CLIENT_APP_EXCEPTION`       ``flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_
                                   EXCEPTION``: the error code of a ClientApp that raised.
:data:`AggregationError`           ``flwr.serverapp.exception.AggregationError``: what
                                   Flower's strategies raise when aggregation fails (not
                                   exported by ``flwr.serverapp``).
:func:`set_reply_origin`           ``Metadata``'s private ``_message_id`` and
                                   ``_src_node_id``: ``Metadata`` has no setter for them.
:func:`message_with_metadata`      ``Message(content|error, metadata=...)``: a keyword
                                   Flower's constructor takes but its typed overloads do
                                   not list.
:func:`flower_console_handlers`    ``flwr.common.logger.ConsoleHandler``: the handler Flower
                                   puts on its ``flwr`` logger.
:func:`custom_torch_backend`       ``torch._C._get_privateuse1_backend_name``: whether a
                                   third-party accelerator backend was registered.
:func:`filter_ray_worker_output`   ``ray._private.ray_logging``'s stdout/stderr dispatcher:
                                   the lines Ray forwards from its workers.
=================================  ==========================================================

Imports of the wrapped modules happen when a name is first used (the constants and
the exception are resolved lazily too): importing this module imports no Flower, torch
or Ray code, so plain PyTorch modules (``fedpers.training``) may use it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.app import Context, Error, Message, Metadata, RecordDict
    from flwr.serverapp.exception import AggregationError

    NUMPY_STYPE: str
    CLIENT_APP_EXCEPTION: int

logger = logging.getLogger(__name__)

# name -> (module, attribute path): resolved on first use by :func:`__getattr__`
_LAZY = {
    # ``Array.stype`` of an array serialised with ``np.save`` (Flower's default)
    "NUMPY_STYPE": ("flwr.common.constant", "SType.NUMPY"),
    # error code of a reply whose ClientApp raised an exception
    "CLIENT_APP_EXCEPTION": ("flwr.common.constant", "ErrorCode.CLIENT_APP_RAISED_EXCEPTION"),
    # what Flower's strategies raise when aggregation fails
    "AggregationError": ("flwr.serverapp.exception", "AggregationError"),
}


def __getattr__(name: str) -> Any:
    """The lazily imported names of :data:`_LAZY`."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, path = _LAZY[name]
    value: Any = importlib.import_module(module)
    for part in path.split("."):
        value = getattr(value, part)
    globals()[name] = value
    return value

__all__ = ["AggregationError", "CLIENT_APP_EXCEPTION", "NUMPY_STYPE", "custom_torch_backend",
           "filter_ray_worker_output", "flower_console_handlers", "is_simulation_grid",
           "lower_pull_interval", "recorddict_from_bytes", "recorddict_to_bytes",
           "ray_kept_between_runs", "run_simulation_engine", "set_reply_origin", "wire_size"]


# --- Flower: Simulation Engine ----------------------------------------------------


def run_simulation_engine(*, num_supernodes: int, client_app: Any, server_app: Any,
                          backend_config: dict[str, Any], server_app_context: Context,
                          app_dir: str, verbose: bool) -> None:
    """Run a ServerApp and ClientApp on Flower's Simulation Engine in this process.

    Parameters
    ----------
    num_supernodes
        SuperNodes the engine starts.
    client_app, server_app
        The ``ClientApp`` and ``ServerApp`` objects.
    backend_config
        The Ray backend config (``init_args``, ``client_resources``, ...).
    server_app_context
        The ServerApp's Context: it carries the run config (the public
        ``flwr.simulation.run_simulation`` passes an empty one).
    app_dir
        A folder the engine treats as the app's directory.
    verbose
        Flower's verbose logging.
    """
    from flwr.common import EventType
    from flwr.simulation.run_simulation import _run_simulation

    _run_simulation(
        num_supernodes=num_supernodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_config=backend_config,
        server_app_context=server_app_context,
        app_dir=app_dir,
        is_app=True,
        verbose_logging=verbose,
    )


@contextmanager
def ray_kept_between_runs() -> Iterator[None]:
    """Within this block, a Simulation Engine run that ends terminates its client actors
    but leaves Ray running (Flower's ``RayBackend.terminate`` also calls
    ``ray.shutdown()``), so that the next run of a sweep reuses the same Ray."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    original = RayBackend.terminate

    def terminate(self: Any) -> None:
        if self.pool:
            self.pool.terminate_all_actors()

    RayBackend.terminate = terminate  # type: ignore[method-assign]
    try:
        yield
    finally:
        RayBackend.terminate = original  # type: ignore[method-assign]


def is_simulation_grid(grid: object) -> bool:
    """Whether ``grid`` is the Simulation Engine's in-memory grid (not a deployment's)."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return isinstance(grid, InMemoryGrid)


def lower_pull_interval(grid: object, seconds: float) -> bool:
    """Make the Simulation Engine's grid poll for replies at least every ``seconds``.

    Returns
    -------
    bool
        Whether ``grid`` is that grid (any other grid is left as it is).
    """
    if not is_simulation_grid(grid):
        return False
    grid.pull_interval = min(grid.pull_interval, seconds)  # type: ignore[attr-defined]
    return True


# --- Flower: messages on the wire -------------------------------------------------


def wire_size(content: RecordDict) -> int:
    """Bytes Flower ships for ``content``: the sum of ``len(obj.deflate())`` over the
    inflatable objects it splits the RecordDict into (the dict, each record, each array).

    Sizing leaves nothing behind: Flower's ``Array`` caches its chunks (memoryview
    slices of its data) when its object id is computed, and the Simulation Engine's Ray
    backend would pickle that cache with the message, sending every array twice to the
    worker. The cache is dropped here; Flower rebuilds it when needed.
    """
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    objects = get_all_nested_objects(content)
    size = sum(len(obj.deflate()) for obj in objects.values())
    for obj in objects.values():
        obj.__dict__.pop("_chunks", None)
    return size


def recorddict_to_bytes(content: RecordDict) -> bytes:
    """``content`` in Flower's protobuf form (deterministic field order)."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(content).SerializeToString(deterministic=True)


def recorddict_from_bytes(blob: bytes) -> RecordDict:
    """The RecordDict of :func:`recorddict_to_bytes`."""
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    return recorddict_from_proto(ProtoRecordDict.FromString(blob))


def set_reply_origin(metadata: Metadata, *, sender: int, message_id: str | None = None) -> None:
    """Set a reply's sender node (and its message id), as Flower itself does when a
    reply arrives: ``Metadata`` has no setter for either."""
    metadata.__dict__["_src_node_id"] = sender
    if message_id is not None:
        metadata.__dict__["_message_id"] = message_id


def message_with_metadata(body: RecordDict | Error, metadata: Metadata) -> Message:
    """A message with the given ``metadata`` (a reply split out of a packed one): Flower's
    ``Message`` takes ``metadata`` as a keyword its typed overloads do not list."""
    from flwr.app import Error, Message

    if isinstance(body, Error):
        return Message(error=body, metadata=metadata)  # type: ignore[call-overload]
    return Message(content=body, metadata=metadata)  # type: ignore[call-overload]


# --- Flower: console --------------------------------------------------------------


def flower_console_handlers() -> list[Any]:
    """The console handlers Flower put on its ``flwr`` logger (they have a ``colored``
    flag)."""
    from flwr.common.logger import ConsoleHandler

    return [h for h in logging.getLogger("flwr").handlers if isinstance(h, ConsoleHandler)]


# --- torch ------------------------------------------------------------------------


def custom_torch_backend() -> bool:
    """Whether a third-party accelerator registered itself as torch's ``privateuse1``
    backend (its name is then no longer ``privateuseone``)."""
    import torch

    return bool(torch._C._get_privateuse1_backend_name() != "privateuseone")


# --- Ray --------------------------------------------------------------------------


def filter_ray_worker_output(handler_name: str,
                             wrap: Callable[[Callable[[dict], None]], Callable[[dict], None]],
                             wrapped: type) -> bool:
    """Put ``wrap(handler)`` in place of the handler named ``handler_name`` that Ray's
    driver uses to print the lines its workers wrote (call after ``ray.init``).

    Parameters
    ----------
    handler_name
        The name Ray registered the handler under.
    wrap
        Called with Ray's handler; returns the handler to use instead.
    wrapped
        The type ``wrap`` returns: a handler already of this type is left alone.

    Returns
    -------
    bool
        Whether a handler was replaced (``False`` when none is registered under that
        name, it is already wrapped, or this Ray lays out its forwarding differently).
    """
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as disp
    except ImportError:  # pragma: no cover - another Ray layout: lines stay as they are
        return False
    with disp._lock:
        for i, (name, handle) in enumerate(disp.handlers):
            if name == handler_name and not isinstance(handle, wrapped):
                disp.handlers[i] = (name, wrap(handle))
                return True
    return False
