"""Run-config values from text: ``--set key=value`` items, TOML config files, and
values written back as TOML literals."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

from fedpers.errors import ConfigError


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings (CLI ``--set``), values as TOML literals if possible."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            out[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = text
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML file of run-config keys (top level or under [tool.flwr.app.config]).

    Raises
    ------
    ConfigError
        Naming the file when it is missing, unreadable, not UTF-8 TOML, or its
        ``[tool.flwr.app.config]`` is not a table.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not a UTF-8 text file (byte "
                          f"{exc.start}); expected TOML") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from exc
    node: Any = data
    for name in ("tool", "flwr", "app", "config"):
        if not isinstance(node, dict) or name not in node:
            return data
        node = node[name]
    if not isinstance(node, dict):
        raise ConfigError(f"config file {str(p)!r}: [tool.flwr.app.config] must be a table "
                          f"of run-config keys, got {type(node).__name__}")
    return dict(node)


def toml_literal(value: Any) -> str:
    """``value`` written as a TOML literal: ``"fmnist"``, ``false``, ``0.05``, ``""``.

    What a config file or ``--set key=VALUE`` takes; ``tomllib`` reads it back as
    ``value``.

    Raises
    ------
    ValueError
        For a value TOML cannot hold as a run-config value (not a bool, int, finite
        float or str).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number; run-config values are")
        return repr(value)  # '0.05', '600.0', '1e-05': all TOML floats
    if isinstance(value, str):
        # JSON's escapes (\" \\ \n \uXXXX ...) are TOML basic-string escapes; TOML also
        # wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    raise ValueError(f"{value!r} ({type(value).__name__}) has no run-config TOML form")
