"""``codec=qsgd``: QSGD with ``s = qsgd-levels`` levels (Alistarh et al., arXiv 1610.02132).

Per block of ``quant-block-size`` values (0 = the whole tensor; the paper's
"buckets") with L2 norm ``||v||``, each value ``x`` is sent as
``sign(x) * ||v|| * l / s`` where ``l`` is ``|x| s / ||v||`` rounded down or up at
random: **unbiased**, E[decode(encode(x))] = x. Error: every value is off by less
than ``||v|| / s``; the paper's variance bound is
E||Q(v) - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2 for a block of d values.

Codes ``sign * l + s`` lie in [0, 2s] and are packed in ``w = ceil(log2(2s + 1))``
bits each (fixed width, not the paper's Elias coding): s = 1 gives 2 bits, s = 7
(the default) 4 bits, s = 127 8 bits. Size: 14-byte header (common header + u32
block size + u16 s) + 4 bytes (fp32 norm) per block + ``ceil(n w / 8)``.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import ClassVar

import numpy as np

import fedpers.codecs._format as f
from fedpers.codecs.base import CodecParams, TensorCodec, l2

PARAMS = struct.Struct("<IH")  # block size, levels


def code_width(levels: int) -> int:
    return max(1, math.ceil(math.log2(2 * levels + 1)))


@dataclasses.dataclass(frozen=True)
class QSGDCodec(TensorCodec):
    levels: int = 7
    block: int = 512

    name: ClassVar[str] = "qsgd"
    tag: ClassVar[int] = 3
    unbiased: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= 32767:
            raise ValueError(f"qsgd levels must be in 1..32767, got {self.levels}")

    @property
    def width(self) -> int:
        return code_width(self.levels)

    def build(self, params: CodecParams) -> QSGDCodec:
        return dataclasses.replace(self, levels=int(params.qsgd_levels),
                                   block=int(params.quant_block_size))

    def _norms(self, x: np.ndarray) -> np.ndarray:
        x64 = x.astype(np.float64)
        return np.sqrt(f.block_sums(x64 * x64, self.block)).astype(np.float32)

    def _encode(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, s = x.size, self.levels
        norms = self._norms(x) if n else np.zeros(0, np.float32)
        codes = np.zeros(0, np.uint16)
        if n:
            sizes = f.block_sizes(n, self.block)
            per = np.repeat(norms, sizes)
            safe = np.where(per > 0, per, np.float32(1.0))
            r = np.abs(x) * np.float32(s) / safe
            level = f.stochastic_round(r, rng, s)
            codes = (np.where(x < 0, -level, level) + s).astype(np.uint16)
        return f.join([f.header(self.tag, n, a=self.width), PARAMS.pack(self.block, s),
                       norms.astype("<f4"), f.pack_bits(codes, self.width)])

    def _decode(self, buf: np.ndarray, n: int, name: str) -> np.ndarray:
        r = f.Reader(buf, name)
        width, _ = r.header(self.tag, self.name, n)
        block, s = r.unpack(PARAMS)
        if (block, s) != (self.block, self.levels) or width != self.width:
            raise r.fail(f"bad header: block {block}, {s} levels, {width}-bit codes; this "
                         f"run uses block {self.block}, {self.levels} levels, "
                         f"{self.width}-bit codes")
        nb = f.num_blocks(n, block)
        norms = r.array("<f4", nb).astype(np.float32)
        packed = r.take(f.packed_nbytes(n, width))
        r.finish()
        f.check_finite(norms, "block norm", r)
        if (norms < 0).any():
            raise r.fail("bad header: negative block norm")
        f.check_trailing_bits_zero(packed, n, width, r)
        codes = f.unpack_bits(packed, n, width)
        if n and int(codes.max()) > 2 * s:
            raise r.fail(f"bad encoding: code {int(codes.max())} above {2 * s}")
        per = np.repeat(norms, f.block_sizes(n, block))
        return ((codes.astype(np.float32) - s) * (per / np.float32(s))).astype(np.float32)

    def nbytes(self, n: int) -> int:
        return (f.HEADER.size + PARAMS.size + 4 * f.num_blocks(n, self.block)
                + f.packed_nbytes(n, self.width))

    def error_bound(self, x: np.ndarray) -> float:
        x = np.asarray(x, np.float32).reshape(-1)
        if x.size == 0:
            return 0.0
        norms = self._norms(x).astype(np.float64)
        per = norms / self.levels * (1 + 8 * np.finfo(np.float32).eps)
        return l2(np.repeat(per, f.block_sizes(x.size, self.block)))
