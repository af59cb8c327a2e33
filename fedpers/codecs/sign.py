"""``codec=sign``: scaled sign, 1 bit per value (Karimireddy et al., arXiv 1901.09847).

Each block of ``quant-block-size`` values (0 = the whole tensor) is sent as the
signs of its values (``x >= 0`` is +) times one scale, the block's mean absolute
value ``||v||_1 / d`` (the scale that minimises the L2 error for given signs).
**Biased** (signSGD's compressor; pair it with ``error-feedback = true``, which is
what the paper shows fixes it). Error, exact for every input: per block
``||v - C(v)||^2 = ||v||^2 - ||v||_1^2 / d <= (1 - 1/d) ||v||^2``.

Size: 12-byte header (common header + u32 block size) + 4 bytes (fp32 scale) per
block + ``ceil(n / 8)`` bytes of packed signs.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

import fedpers.codecs._format as f
from fedpers.codecs.base import CodecParams, TensorCodec


@dataclasses.dataclass(frozen=True)
class ScaledSignCodec(TensorCodec):
    block: int = 512

    name: ClassVar[str] = "sign"
    tag: ClassVar[int] = 4

    def build(self, params: CodecParams) -> ScaledSignCodec:
        return dataclasses.replace(self, block=int(params.quant_block_size))

    def _scales(self, x: np.ndarray) -> np.ndarray:
        sums = f.block_sums(np.abs(x), self.block)
        return (sums / np.maximum(f.block_sizes(x.size, self.block), 1)).astype(np.float32)

    def _encode(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return f.join([f.header(self.tag, x.size, a=1), f.U32.pack(self.block),
                       self._scales(x).astype("<f4"), f.pack_bits((x >= 0), 1)])

    def _decode(self, buf: np.ndarray, n: int, name: str) -> np.ndarray:
        r = f.Reader(buf, name)
        width, _ = r.header(self.tag, self.name, n)
        (block,) = r.unpack(f.U32)
        if width != 1 or block != self.block:
            raise r.fail(f"bad header: {width}-bit codes, block size {block}; this run uses "
                         f"1-bit codes, block size {self.block}")
        nb = f.num_blocks(n, block)
        scales = r.array("<f4", nb).astype(np.float32)
        packed = r.take(f.packed_nbytes(n, 1))
        r.finish()
        f.check_finite(scales, "scale", r)
        if (scales < 0).any():
            raise r.fail("bad header: negative scale")
        f.check_trailing_bits_zero(packed, n, 1, r)
        signs = f.unpack_bits(packed, n, 1).astype(np.float32) * 2 - 1
        return (signs * np.repeat(scales, f.block_sizes(n, block))).astype(np.float32)

    def nbytes(self, n: int) -> int:
        return f.HEADER.size + f.U32.size + 4 * f.num_blocks(n, self.block) + \
            f.packed_nbytes(n, 1)

    def error_bound(self, x: np.ndarray) -> float:
        x = np.asarray(x, np.float32).reshape(-1)
        if x.size == 0:
            return 0.0
        sq = f.block_sums(x.astype(np.float64) ** 2, self.block)
        sizes = f.block_sizes(x.size, self.block)
        l1 = f.block_sums(np.abs(x), self.block)
        exact = float(np.sqrt(max(float((sq - l1 * l1 / sizes).sum()), 0.0)))
        return exact + 8 * float(np.finfo(np.float32).eps) * float(np.sqrt(sq.sum()))
