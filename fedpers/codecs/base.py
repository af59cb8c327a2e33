"""The codec protocol and the base class of the lossy tensor codecs.

A codec compresses a dict of named float arrays (for uploads: the model *update*,
see :mod:`fedpers.codecs.update`) into the dict of arrays that is actually sent,
and back. Codecs are pure numpy: no Flower, no torch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Protocol

import numpy as np

from fedpers.registry import Params


class CodecError(ValueError):
    """An encoded payload is malformed (wrong length, bad header, ...)."""


@dataclasses.dataclass(frozen=True)
class CodecParams(Params):
    """The compression keys of a run config (``fedpers keys``, group Compression).

    Attributes
    ----------
    codec : str
        ``codec``: the upload codec's name.
    codec_down : str
        ``codec-down``: the broadcast codec's name.
    error_feedback : bool
        ``error-feedback``: clients keep what a lossy codec did not send.
    quant_block_size : int
        ``quant-block-size``: values per scale of q8/q4/q2, qsgd and sign (0 = one
        scale per tensor).
    qsgd_levels : int
        ``qsgd-levels``: QSGD's levels s.
    sparse_fraction : float
        ``sparse-fraction``: share of each tensor top-k / rand-k send.
    sparse_values : str
        ``sparse-values``: how top-k / rand-k code the values they keep.
    """

    codec: str
    codec_down: str
    error_feedback: bool
    quant_block_size: int
    qsgd_levels: int
    sparse_fraction: float
    sparse_values: str


class Codec(Protocol):
    """What every ``CODECS`` entry provides.

    ``lossy`` codecs encode the model update (local minus global) and the server adds
    the decoded update to its global model; a lossless codec (``none``) sends the
    weights as they are. ``unbiased`` codecs satisfy E[decode(encode(x))] = x over
    their random draws.
    """

    # read-only members: a codec may hold them as class variables
    @property
    def name(self) -> str: ...

    @property
    def lossy(self) -> bool: ...

    @property
    def unbiased(self) -> bool: ...

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

    def build(self, params: CodecParams) -> Codec:
        """This codec with the run's compression parameters (a configured copy)."""
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

    def build(self, params: CodecParams) -> TensorCodec:
        return self


def l2(x: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(x, dtype=np.float64).reshape(-1)))
