"""How a run-config key is declared and checked: its field, its value rules, coercion.

:func:`key` declares a :class:`fedpers.config.RunConfig` field (its kebab-case name,
default, value check and meaning); the checks below return ``None`` for a valid value
or the reason it is not; :data:`RULES` is how ``fedpers keys`` words each check;
:func:`coerce` turns a TOML/CLI value into the key's type.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpers.errors import ConfigError


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def fraction(v: Any) -> str | None:
    return None if 0.0 < v <= 1.0 else "must be in (0, 1]"


def open_fraction(v: Any) -> str | None:
    return None if 0.0 < v < 1.0 else "must be in (0, 1)"


def unit_interval(v: Any) -> str | None:
    return None if 0.0 <= v <= 1.0 else "must be in [0, 1]"


def unit_open(v: Any) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"



def half_open(v: Any) -> str | None:
    return None if 0.0 <= v < 0.5 else "must be in [0, 0.5)"


def percentile(v: Any) -> str | None:
    return None if 0.0 < v < 100.0 else "must be in (0, 100)"


def qsgd_levels(v: Any) -> str | None:
    return None if 1 <= v <= 32767 else "must be in 1..32767"


def absolute_dir(v: Any) -> str | None:
    if v == "" or Path(str(v)).expanduser().is_absolute():
        return None
    return "must be an absolute path (or '' for off): clients run in other processes"


@dataclass(frozen=True)
class OneOf:
    """The check of a key whose value is one of fixed ``choices`` (listed by
    ``fedpers keys``)."""

    choices: tuple[str, ...]

    def __call__(self, v: Any) -> str | None:
        return None if v in self.choices else f"must be one of {', '.join(self.choices)}"


def one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return OneOf(tuple(choices))


def int_list(v: Any) -> str | None:
    if v == "":
        return None
    try:
        [int(p) for p in str(v).split(",")]
    except ValueError:
        return "must be a comma-separated list of integers, e.g. '5,7,9'"
    return None


def run_key(name: str, default: Any, check: Callable[[Any], str | None] | None = None,
         doc: str = "", hashed_when_set: bool = False) -> Any:
    """A run-config key. ``hashed_when_set``: a key added after runs were recorded,
    whose default keeps the old behaviour; it enters :meth:`RunConfig.digest` only when
    set to another value, so adding it keeps every recorded run's digest (benchmark
    sweeps reuse finished runs by digest)."""
    return field(default=default, metadata={"key": name, "check": check, "doc": doc,
                                            "hashed_when_set": hashed_when_set})


#: The valid values of each value check, as ``fedpers keys`` prints them.
RULES: dict[Callable[[Any], str | None], str] = {
    positive: "> 0",
    non_negative: ">= 0",
    fraction: "in (0, 1]",
    open_fraction: "in (0, 1)",
    unit_interval: "in [0, 1]",
    unit_open: "in [0, 1)",
    half_open: "in [0, 0.5)",
    percentile: "in (0, 100)",
    qsgd_levels: "an integer in 1..32767",
    absolute_dir: "an absolute path, or '' for off",
    int_list: "comma-separated integers, or ''",
}
TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string"}


def coerce(key: str, value: Any, target: Any) -> Any:
    kind = type(target)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"run-config key '{key}': expected true/false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"run-config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"run-config key '{key}': expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"run-config key '{key}': expected a number, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"run-config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"run-config key '{key}' = {value!r}: must be a finite number "
                              f"(not nan or inf)")
        return number
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"run-config key '{key}': expected a string, got {value!r}")
    return str(value)
