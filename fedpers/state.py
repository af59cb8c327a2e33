"""Explicit state of the server's components: ``state_dict()`` / ``load_state_dict()``.

Every component the round loop builds (strategy, selector, aggregator, DP mode,
participation and its clock, byte counters, reject-reason counters, ...) either
carries state from one round to the next and has both methods, as PyTorch modules
do, or is declared stateless with a class attribute ``stateless = True`` (a frozen
dataclass is stateless by construction). :func:`require_state_protocol` checks one
component; the checkpoint (``fedpers.server_checkpoint``) walks the components by
name and never reaches into their attributes.

A state dict is a nested ``dict`` whose leaves are JSON values (``None``, bools,
numbers, strings, lists of them) or numpy arrays; lists may hold arrays too.
:func:`flatten` splits one into JSON metadata and named arrays (what a checkpoint
file stores), :func:`unflatten` puts it back together. Dict order is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: the JSON stand-in of an array in flattened metadata: {ARRAY_TAG: "<array name>"}
ARRAY_TAG = "__array__"


class StateError(TypeError):
    """A component that carries state without ``state_dict`` / ``load_state_dict``,
    or a state dict that cannot be stored or loaded."""


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]:
        """What the component carries into the next round (JSON values and arrays)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Put :meth:`state_dict`'s output back."""
        ...


def is_stateless(component: object) -> bool:
    """Declared stateless: ``stateless = True`` on its class, a frozen dataclass, or
    ``None`` (a component that is switched off)."""
    if component is None or getattr(type(component), "stateless", False) is True:
        return True
    params = getattr(type(component), "__dataclass_params__", None)
    return dataclasses.is_dataclass(component) and bool(params and params.frozen)


def require_state_protocol(name: str, component: object) -> None:
    """Raise :class:`StateError` unless ``component`` has both state methods or is
    declared stateless (:func:`is_stateless`)."""
    has = [m for m in ("state_dict", "load_state_dict")
           if callable(getattr(component, m, None))]
    if len(has) == 2:
        return
    if has:
        raise StateError(f"component {name!r} ({type(component).__name__}) has {has[0]} "
                         f"but not its pair; a stateful component needs both state_dict "
                         f"and load_state_dict")
    if not is_stateless(component):
        raise StateError(f"component {name!r} ({type(component).__name__}) has no "
                         f"state_dict/load_state_dict and is not declared stateless "
                         f"(stateless = True on its class, or a frozen dataclass); a "
                         f"checkpoint would silently leave its state out")


def collect(components: Mapping[str, object]) -> dict[str, Any]:
    """``{name: component.state_dict()}`` of the stateful components (each checked)."""
    out = {}
    for name, component in components.items():
        require_state_protocol(name, component)
        if isinstance(component, Stateful):
            out[name] = component.state_dict()
    return out


def restore(components: Mapping[str, object], states: Mapping[str, Any]) -> None:
    """Load each stateful component's state from ``states`` (:func:`collect`'s output);
    :class:`StateError` naming a component whose state is missing."""
    for name, component in components.items():
        require_state_protocol(name, component)
        if not isinstance(component, Stateful):
            continue
        if name not in states:
            raise StateError(f"the checkpoint holds no state of component {name!r}; "
                             f"it holds {', '.join(sorted(states)) or 'none'}")
        component.load_state_dict(states[name])


# ------------------------------------------------------------------ storage form
def flatten(state: Any, prefix: str = "") -> tuple[Any, dict[str, np.ndarray]]:
    """(JSON metadata, named arrays) of a state dict; each array in the metadata is
    replaced by ``{ARRAY_TAG: name}``, its name the path to it (``a/b/0``)."""
    arrays: dict[str, np.ndarray] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, np.ndarray):
            arrays[path] = value
            return {ARRAY_TAG: path}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, Mapping):
            for k in value:
                if not isinstance(k, str):
                    raise StateError(f"state key {k!r} at {path or '/'!r} is not a string")
            return {k: walk(v, f"{path}/{k}" if path else k) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}/{i}" if path else str(i)) for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise StateError(f"state value at {path or '/'!r} is a {type(value).__name__}; a "
                         f"state dict holds JSON values and numpy arrays")

    return walk(state, prefix), arrays


def unflatten(meta: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The state dict :func:`flatten` split (arrays copied out of ``arrays``)."""
    if isinstance(meta, dict):
        if set(meta) == {ARRAY_TAG}:
            name = meta[ARRAY_TAG]
            if name not in arrays:
                raise StateError(f"the checkpoint has no array {name!r}")
            return np.array(arrays[name])
        return {k: unflatten(v, arrays) for k, v in meta.items()}
    if isinstance(meta, list):
        return [unflatten(v, arrays) for v in meta]
    return meta
