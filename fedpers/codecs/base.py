"""The codec protocol."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class CodecError(ValueError):
    """An encoded payload is malformed (wrong length, bad header, ...)."""


class Codec(Protocol):
    def encode(self, arrays: dict[str, np.ndarray],
               rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The form that is sent; may be lossy and use ``rng`` for stochastic rounding."""
        ...

    def decode(self, payload: dict[str, np.ndarray],
               reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Back to named float arrays shaped like ``reference``; raise CodecError if malformed."""
        ...
