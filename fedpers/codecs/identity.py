"""``codec=none``: send fp32 arrays as they are."""

from __future__ import annotations

import numpy as np

from fedpers.codecs.base import CodecError


class IdentityCodec:
    def encode(self, arrays: dict[str, np.ndarray],
               rng: np.random.Generator) -> dict[str, np.ndarray]:
        return arrays

    def decode(self, payload: dict[str, np.ndarray],
               reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, arr in payload.items():
            ref = reference.get(name)
            if ref is None:
                raise CodecError(f"unexpected array {name!r}")
            if arr.shape != ref.shape:
                raise CodecError(f"array {name!r} has shape {arr.shape}, expected {ref.shape}")
        return payload
