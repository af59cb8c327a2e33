"""Explicit state of the client's components: the Context-state records each one owns.

A client's state across rounds lives in its Flower Context state (a RecordDict), never
in the component objects: one ClientApp process serves many clients (simulation,
virtual nodes) with the same registry instances. So a stateful client component
(a personaliser's private parameters, SCAFFOLD's ``c_i``, Ditto's personal model,
the codec's error-feedback residual) has a method ``state(context_state)`` that gives
a :class:`ContextRecords`, the records it owns in that client's state, with
``state_dict()`` / ``load_state_dict()`` as PyTorch modules have. A stateless one
says so with the class attribute ``stateless = True``.

The client checkpoint (:func:`checkpoint_state`, :func:`restore_state`, used by
``fedpers.client_app``'s save and load handlers) walks the components: every record
of the Context state is saved and loaded through the component that owns it, and a
record no component owns is named in a warning (and still kept, so nothing is lost).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from flwr.app import RecordDict

from fedpers.arrays import record_to_numpy, to_array_record

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


class ContextRecords:
    """The ArrayRecords of one client's Context state that one component owns.

    Parameters
    ----------
    state
        The client's Context state (changed in place by :meth:`load_state_dict`).
    owns
        The record names (a collection), or a predicate on a record name.
    """

    def __init__(self, state: RecordDict, owns: Collection[str] | Callable[[str], bool]
                 ) -> None:
        self.state = state
        self._owns = owns if callable(owns) else frozenset(owns).__contains__

    def owns(self, name: str) -> bool:
        """Whether the record ``name`` is this component's."""
        return bool(self._owns(name))

    def names(self) -> list[str]:
        """The owned records the state holds now, in the state's order."""
        return [name for name in self.state.array_records if self.owns(name)]

    def state_dict(self) -> dict[str, Arrays]:
        """``{record name: {array name: numpy array}}`` of the owned records."""
        return {name: record_to_numpy(self.state.array_records[name])
                for name in self.names()}

    def load_state_dict(self, saved: Mapping[str, Arrays]) -> None:
        """Put :meth:`state_dict`'s output back (other records are left as they are).

        Raises
        ------
        KeyError
            For a record name this component does not own.
        """
        for name, arrays in saved.items():
            if not self.owns(name):
                raise KeyError(f"record {name!r} is not one this component keeps in the "
                               f"client's Context state")
            self.state[name] = to_array_record(dict(arrays))


@runtime_checkable
class ClientStateful(Protocol):
    """A client component with state across rounds (kept in the Context state)."""

    def state(self, context_state: RecordDict) -> ContextRecords:
        """The records this component owns in ``context_state``."""
        ...


def is_stateless(component: object) -> bool:
    """Declared stateless: ``stateless = True`` on its class, or a frozen dataclass."""
    if getattr(type(component), "stateless", False) is True:
        return True
    params = getattr(type(component), "__dataclass_params__", None)
    return dataclasses.is_dataclass(component) and bool(params and params.frozen)


def require_declared(name: str, component: object) -> None:
    """Raise ``TypeError`` unless ``component`` has ``state()`` or is declared stateless."""
    if callable(getattr(component, "state", None)) or is_stateless(component):
        return
    raise TypeError(f"client component {name!r} ({type(component).__name__}) has no "
                    f"state(context_state) and is not declared stateless (stateless = True "
                    f"on its class): a checkpoint could not tell which records are its")


def owned_records(components: Mapping[str, object], context_state: RecordDict
                  ) -> dict[str, ContextRecords]:
    """``{component name: its ContextRecords}`` of the stateful components (each
    checked with :func:`require_declared`)."""
    out = {}
    for name, component in components.items():
        require_declared(name, component)
        if not is_stateless(component):
            out[name] = component.state(context_state)  # type: ignore[attr-defined]
    return out


def _owner(name: str, owners: Mapping[str, ContextRecords]) -> str | None:
    return next((comp for comp, records in owners.items() if records.owns(name)), None)


def _unowned(names: list[str], owners: Mapping[str, ContextRecords], what: str) -> None:
    lost = [n for n in names if _owner(n, owners) is None]
    if lost:
        logger.warning("client state: record(s) %s belong to no component of this run "
                       "(%s); kept as they are", ", ".join(map(repr, lost)), what)


def checkpoint_state(components: Mapping[str, object], context_state: RecordDict
                     ) -> RecordDict:
    """What a checkpoint saves: each component's records, in the Context state's order.

    The records are the Context state's own (not copies), so what is written is exactly
    what Flower would ship.
    """
    owners = owned_records(components, context_state)
    names = list(context_state.keys())
    _unowned([n for n in names if n in context_state.array_records], owners, "saving")
    walked = {name for records in owners.values() for name in records.state_dict()}
    out = RecordDict()
    for name in names:
        record: ArrayRecord | Any = context_state[name]
        if name in walked or _owner(name, owners) is None:
            out[name] = record
    return out


def restore_state(components: Mapping[str, object], context_state: RecordDict,
                  saved: RecordDict) -> None:
    """Make ``context_state`` hold ``saved``: each component loads its own records
    (``load_state_dict``), records of no component are put back as they are."""
    for name in list(context_state.keys()):
        del context_state[name]
    owners = owned_records(components, context_state)
    _unowned([n for n in saved.keys() if n in saved.array_records], owners, "loading")
    for name, record in saved.items():
        owner = _owner(name, owners) if name in saved.array_records else None
        if owner is None:
            context_state[name] = record
        else:
            owners[owner].load_state_dict({name: record_to_numpy(saved.array_records[name])})


__all__ = ["ClientStateful", "ContextRecords", "checkpoint_state", "is_stateless",
           "owned_records", "require_declared", "restore_state"]
