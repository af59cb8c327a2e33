"""``codec=none``: send the fp32 weights as they are (not an update).

Lossless, so uploads are bit-identical to a run without any codec. Size: the raw
array bytes (``4 * n`` for fp32) plus Flower's framing.
"""

from __future__ import annotations

import math

import numpy as np

from fedpers.codecs.base import CodecError, CodecParams


class IdentityCodec:
    stateless = True  # holds no data between calls
    name = "none"
    lossy = False
    unbiased = True

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

    def encoded_nbytes(self, shape: tuple[int, ...]) -> int:
        return 4 * math.prod(shape)

    def error_bound(self, x: np.ndarray) -> float:
        return 0.0

    def build(self, params: CodecParams) -> IdentityCodec:
        return self
