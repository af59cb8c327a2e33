"""Error types shared across fedpers, in a leaf module (no fedpers imports).

Components (codecs, selectors, aggregators, attacks, privacy, tasks, strategies,
personalisers) raise :class:`ConfigError` for a bad run-config value without
importing :mod:`fedpers.config`, which imports their registries; the config
module re-exports it, so ``from fedpers.config import ConfigError`` keeps working.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A run-config key is unknown or its value is invalid."""


__all__ = ["ConfigError"]
