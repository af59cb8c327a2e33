"""``codec=q8 | q4 | q2``: stochastic uniform quantisation to b bits, per block.

Each block of ``quant-block-size`` values (0 = the whole tensor) is mapped onto
``2^b`` evenly spaced levels between its minimum ``lo`` and maximum ``hi``, step
``s = (hi - lo) / (2^b - 1)``; a value is rounded to one of its two neighbouring
levels at random with probabilities that make the result **unbiased**
(E[decode(encode(x))] = x; Suresh et al., arXiv 1611.00429; Konečný et al.,
arXiv 1610.05492). Error: every value is off by less than its block's step ``s``,
and the variance per value is at most ``s^2 / 4``.

Size: 12-byte header (common header + u32 block size) + 8 bytes per block
(``lo`` and ``s`` as fp32) + ``ceil(n b / 8)`` bytes of codes packed b bits each.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

import fedpers.codecs._format as f
from fedpers.codecs.base import CodecParams, TensorCodec, l2


def quantise(x: np.ndarray, bits: int, block: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, step, codes) of the stochastic uniform quantisation of flat ``x``."""
    n = x.size
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.uint16)
    top = (1 << bits) - 1
    m = f.blocked(x, block)
    lo = m.min(axis=1)
    step = ((m.max(axis=1) - lo) / np.float32(top)).astype(np.float32)
    safe = np.where(step > 0, step, np.float32(1.0))
    t = (m - lo[:, None]) / safe[:, None]
    codes = f.stochastic_round(t, rng, top).reshape(-1)[:n]
    return lo.astype(np.float32), step, codes.astype(np.uint16 if bits > 8 else np.uint8)


def dequantise(lo: np.ndarray, step: np.ndarray, codes: np.ndarray, n: int,
               block: int) -> np.ndarray:
    if n == 0:
        return np.zeros(0, np.float32)
    sizes = f.block_sizes(n, block)
    return (np.repeat(lo, sizes) + codes.astype(np.float32) * np.repeat(step, sizes)
            ).astype(np.float32)


def quantise_error_bound(x: np.ndarray, bits: int, block: int) -> float:
    """sqrt(sum over values of (their block's step)^2), plus fp32 rounding slack."""
    x = np.asarray(x, np.float32).reshape(-1)
    if x.size == 0:
        return 0.0
    m = f.blocked(x, block).astype(np.float64)
    step = (m.max(axis=1) - m.min(axis=1)) / ((1 << bits) - 1)
    scale = np.abs(m).max(axis=1)
    per = step + 8 * np.finfo(np.float32).eps * scale
    return l2(np.repeat(per, f.block_sizes(x.size, block)))


@dataclasses.dataclass(frozen=True)
class UniformQuantizer(TensorCodec):
    bits: int = 8
    block: int = 512

    tag: ClassVar[int] = 2
    unbiased: ClassVar[bool] = True

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"q{self.bits}"

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 16:
            raise ValueError(f"bits must be in 1..16, got {self.bits}")

    def build(self, params: CodecParams) -> UniformQuantizer:
        return dataclasses.replace(self, block=int(params.quant_block_size))

    def _encode(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lo, step, codes = quantise(x, self.bits, self.block, rng)
        return f.join([f.header(self.tag, x.size, a=self.bits), f.U32.pack(self.block),
                       lo.astype("<f4"), step.astype("<f4"), f.pack_bits(codes, self.bits)])

    def _decode(self, buf: np.ndarray, n: int, name: str) -> np.ndarray:
        r = f.Reader(buf, name)
        bits, _ = r.header(self.tag, self.name, n)
        if bits != self.bits:
            raise r.fail(f"bad header: {bits}-bit codes, this run uses {self.bits}")
        (block,) = r.unpack(f.U32)
        if block != self.block:
            raise r.fail(f"bad header: block size {block}, this run uses {self.block}")
        nb = f.num_blocks(n, block)
        lo = r.array("<f4", nb).astype(np.float32)
        step = r.array("<f4", nb).astype(np.float32)
        packed = r.take(f.packed_nbytes(n, bits))
        r.finish()
        f.check_finite(lo, "block minimum", r)
        f.check_finite(step, "block step", r)
        if (step < 0).any():
            raise r.fail("bad header: negative block step")
        f.check_trailing_bits_zero(packed, n, bits, r)
        return dequantise(lo, step, f.unpack_bits(packed, n, bits), n, block)

    def nbytes(self, n: int) -> int:
        return (f.HEADER.size + f.U32.size + 8 * f.num_blocks(n, self.block)
                + f.packed_nbytes(n, self.bits))

    def error_bound(self, x: np.ndarray) -> float:
        return quantise_error_bound(x, self.bits, self.block)
