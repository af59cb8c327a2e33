"""The one registry idiom of fedpers: a run-config key's names mapped to their entries.

Every component family (``task``, ``strategy``, ``personalization``, ``codec``,
``selection``, ``aggregation``, ``attack``, ``dp``) registers its entries in one
:class:`Registry` literal next to its code::

    SELECTORS = Registry("selection", {
        "uniform": UniformSelector(),
        "pow-d": PowerOfChoice(),
    })

An entry is the registered thing itself; where the component takes run-config
parameters, the entry is its factory: ``entry.build(params)`` returns the component
built from the family's parameters, and :meth:`Registry.build` does the lookup and
the call in one step. Families whose entries take no parameters (tasks,
personalisers) are used through :meth:`Registry.get`.

An unknown name is a :class:`~fedpers.errors.ConfigError` that names the run-config
key and lists the valid names, in the same words for every registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from fedpers.errors import ConfigError

E = TypeVar("E")
_REQUIRED = object()  # Registry.get without a default
P = TypeVar("P", bound="Params")


class Params:
    """Base of a component family's frozen parameter dataclass.

    Each field is named like the :class:`~fedpers.config.RunConfig` attribute of one
    of the family's run-config keys (``quant_block_size`` for ``quant-block-size``);
    the key, its default, its check and its documentation stay declared once, in
    ``fedpers/config.py``. :meth:`from_config` copies those values out of a run
    config, so a component's factory receives its own keys and nothing else.
    """

    @classmethod
    def from_config(cls: type[P], cfg: Any) -> P:
        """The family's values in ``cfg`` (a RunConfig, or any object with those
        attributes)."""
        return cls(**{f.name: getattr(cfg, f.name)
                      for f in dataclasses.fields(cls)})  # type: ignore[arg-type]



def unknown_name(key: str, name: object, names: Iterator[str] | tuple[str, ...]) -> ConfigError:
    """The error for a name that ``key``'s registry does not hold."""
    return ConfigError(f"run-config key '{key}': unknown name {name!r}; "
                       f"valid names: {', '.join(sorted(names))}")


class Registry(Generic[E]):
    """The entries of one run-config key, by name, in registration order.

    Parameters
    ----------
    key : str
        The run-config key whose value names an entry (``"codec"``).
    entries : Mapping of str to E
        Name to entry; the order is the order ``fedpers keys`` lists the names in.

    Notes
    -----
    ``name in registry``, ``iter(registry)`` (the names), ``len``, ``registry[name]``
    (same as :meth:`get`), :meth:`keys`, :meth:`items` and :meth:`values` work as on a
    dict. ``registry[name] = entry`` and ``del registry[name]`` change this process's
    registry only: enough to try a component by hand, not for a run, whose clients
    import the registries afresh in other processes (a new entry belongs in the
    literal).
    """

    def __init__(self, key: str, entries: Mapping[str, E]) -> None:
        self.key = key
        self._entries: dict[str, E] = dict(entries)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def get(self, name: str, default: Any = _REQUIRED) -> E:
        """The entry called ``name`` (``default``, where given, for an unknown name, as
        ``dict.get``: lets tools that treat a registry as a mapping work).

        Raises
        ------
        ConfigError
            For an unknown name and no ``default``; the message names the run-config
            key and lists the valid names.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            if default is not _REQUIRED:
                return default
            raise unknown_name(self.key, name, self.names()) from None

    def build(self, name: str, params: Any) -> Any:
        """The component ``name`` built from its family's ``params``:
        ``get(name).build(params)``."""
        return self.get(name).build(params)  # type: ignore[attr-defined]

    def __getitem__(self, name: str) -> E:
        return self.get(name)

    def __setitem__(self, name: str, entry: E) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> tuple[str, ...]:
        """The names (as :meth:`names`; lets ``dict(registry)`` and ``{**registry}`` work)."""
        return self.names()

    def items(self) -> list[tuple[str, E]]:
        """(name, entry) pairs, in registration order."""
        return list(self._entries.items())

    def values(self) -> list[E]:
        """The entries, in registration order."""
        return list(self._entries.values())

    def __repr__(self) -> str:
        return f"Registry({self.key!r}, names={list(self._entries)})"


__all__ = ["Params", "Registry", "unknown_name"]
