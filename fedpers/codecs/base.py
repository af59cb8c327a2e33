"""The codec protocol and the base class of the lossy tensor codecs.

A codec compresses a dict of named float arrays (for uploads: the model *update*,
see :mod:`fedpers.codecs.update`) into the dict of arrays that is actually sent,
and back. Codecs are pure numpy: no Flower, no torch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Protocol

import numpy as np


class CodecError(ValueError):
    """An encoded payload is malformed (wrong length, bad header, ...)."""


class Codec(Protocol):
    """What every ``CODECS`` entry provides.

    ``lossy`` codecs encode the model update (local minus global) and the server adds
    the decoded update to its global model; a lossless codec (``none``) sends the
    weights as they are. ``unbiased`` codecs satisfy E[decode(encode(x))] = x over
    their random draws.
    """

    name: str
    lossy: bool
    unbiased: bool

    def encode(self, arrays: dict[str, np.ndarray],
               rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The form that is sent; may be lossy and use ``rng`` for stochastic rounding."""
        ...

    def decode(self, payload: dict[str, np.ndarray],
               reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Back to named float arrays shaped like ``reference``; raise CodecError if malformed."""
        ...

    def encoded_nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of one float32 tensor of ``shape`` in encoded form (exact, or an upper
        bound where the docstring says so)."""
        ...

    def error_bound(self, x: np.ndarray) -> float:
        """A bound on ``||x - decode(encode(x))||_2`` that holds for every random draw."""
        ...

    def configure(self, cfg: Any) -> Codec:
        """A copy with the parameters the run config sets (duck-typed ``RunConfig``)."""
        ...


@dataclasses.dataclass(frozen=True)
class TensorCodec:
    """A lossy codec that encodes each float tensor on its own into one uint8 array.

    Subclasses implement the per-tensor ``_encode`` / ``_decode`` / ``nbytes`` on a
    flat float32 vector; this class handles names, shapes and dtypes, and turns any
    inconsistency between a payload and the reference into :class:`CodecError`.
    """

    name: ClassVar[str] = ""
    tag: ClassVar[int] = 0
    lossy: ClassVar[bool] = True
    unbiased: ClassVar[bool] = False

    # --------------------------------------------------------- per tensor
    def _encode(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _decode(self, buf: np.ndarray, n: int, name: str) -> np.ndarray:
        raise NotImplementedError

    def nbytes(self, n: int) -> int:
        """Encoded bytes of a tensor of ``n`` elements."""
        raise NotImplementedError

    def error_bound(self, x: np.ndarray) -> float:
        raise NotImplementedError

    # --------------------------------------------------------- dict level
    def encode(self, arrays: dict[str, np.ndarray],
               rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {k: self._encode(np.asarray(v, dtype=np.float32).reshape(-1), rng)
                for k, v in arrays.items()}

    def decode(self, payload: dict[str, np.ndarray],
               reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for k, buf in payload.items():
            ref = reference.get(k)
            if ref is None:
                raise CodecError(f"unexpected array {k!r}")
            flat = self._decode(buf, int(ref.size), k)
            out[k] = flat.reshape(ref.shape).astype(ref.dtype, copy=False)
        return out

    def encoded_nbytes(self, shape: tuple[int, ...]) -> int:
        return self.nbytes(math.prod(shape))

    def configure(self, cfg: Any) -> TensorCodec:
        return self


def l2(x: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(x, dtype=np.float64).reshape(-1)))
