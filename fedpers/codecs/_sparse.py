"""What top-k and rand-k share: how many values to keep, how the kept values and
their positions are coded.

Values (``sparse-values``): ``fp32`` (4 bytes each, exact), ``fp16`` (2 bytes,
relative error <= 2^-11), ``q8`` (one fp32 ``lo`` and ``step`` for the k values +
1 byte each, stochastic uniform rounding: unbiased given the positions), ``sign``
(one fp32 scale, the mean magnitude of the k values, + 1 bit each: every kept value
is sent as +-scale, the ternary coding of Sparse Ternary Compression, Sattler et al.,
arXiv 1903.02891; biased, meant with error feedback).

Positions (top-k only; rand-k regenerates them from a seed), the smallest of three
codes of the sorted indices:

- gaps (first index, then differences) in the smallest unsigned type that holds
  the largest gap (u8, u16 or u32);
- a bitmap of ``ceil(n / 8)`` bytes;
- Golomb-Rice codes of the gaps ``g_0 = i_0``, ``g_j = i_j - i_{j-1} - 1`` with
  parameter ``b`` (u8): the ``b`` low bits of every gap, packed, then the quotients
  ``g >> b`` in unary (``q`` ones and a zero each), packed. About ``log2(n / k) + 2``
  bits per index, half of u16 gaps at 1% density (Sattler et al. code STC's
  positions the same way). The two streams keep decoding vectorised: the k-th
  zero of the unary stream ends it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

import fedpers.codecs._format as f
from fedpers.codecs.base import CodecParams, TensorCodec, l2
from fedpers.codecs.fp16 import FP16_MAX
from fedpers.codecs.uniform import dequantise, quantise, quantise_error_bound

VALUE_TAGS = {"fp32": 0, "fp16": 1, "q8": 2, "sign": 3}
VALUE_NAMES = {v: k for k, v in VALUE_TAGS.items()}
INDEX_BITMAP = 0
INDEX_GAP_DTYPES = {1: "<u1", 2: "<u2", 3: "<u4"}  # index tag -> gap dtype
INDEX_RICE = 4
MAX_RICE_PARAM = 16  # pack_bits packs up to 16 bits; a larger gap fits u32 gaps better


def keep_count(n: int, fraction: float) -> int:
    """k: how many of ``n`` values a sparsifier keeps (at least one of a non-empty tensor)."""
    if n == 0:
        return 0
    return min(n, max(1, math.ceil(fraction * n - 1e-9)))


# ------------------------------------------------------------------ values
def values_nbytes(k: int, tag: int) -> int:
    if tag == VALUE_TAGS["fp32"]:
        return 4 * k
    if tag == VALUE_TAGS["fp16"]:
        return 2 * k
    if tag == VALUE_TAGS["sign"]:
        return 4 + f.packed_nbytes(k, 1)
    return 8 + k


def sign_scale(v: np.ndarray) -> np.float32:
    """The one magnitude ``sign`` values are sent with: the mean |v| (0 when empty)."""
    return np.float32(np.abs(v, dtype=np.float64).mean()) if v.size else np.float32(0.0)


def encode_values(v: np.ndarray, tag: int, rng: np.random.Generator) -> list:
    if tag == VALUE_TAGS["fp32"]:
        return [v.astype("<f4")]
    if tag == VALUE_TAGS["fp16"]:
        return [np.clip(v, -FP16_MAX, FP16_MAX).astype("<f2")]
    if tag == VALUE_TAGS["sign"]:
        return [np.array([sign_scale(v)], "<f4"), f.pack_bits((v < 0).astype(np.uint8), 1)]
    if v.size == 0:
        return [np.zeros(2, "<f4")]
    lo, step, codes = quantise(v, 8, 0, rng)
    return [lo.astype("<f4"), step.astype("<f4"), codes]


def decode_values(r: f.Reader, k: int, tag: int) -> np.ndarray:
    if tag == VALUE_TAGS["fp32"]:
        values = r.array("<f4", k).astype(np.float32)
    elif tag == VALUE_TAGS["fp16"]:
        values = r.array("<f2", k).astype(np.float32)
    elif tag == VALUE_TAGS["q8"]:
        lo, step = (a.astype(np.float32) for a in (r.array("<f4", 1), r.array("<f4", 1)))
        codes = r.take(k)
        f.check_finite(np.concatenate([lo, step]), "value scale", r)
        values = dequantise(lo, step, codes, k, 0) if k else np.zeros(0, np.float32)
    elif tag == VALUE_TAGS["sign"]:
        scale = r.array("<f4", 1).astype(np.float32)
        f.check_finite(scale, "value scale", r)
        if scale[0] < 0:
            raise r.fail("bad header: negative sign scale")
        packed = r.take(f.packed_nbytes(k, 1))
        f.check_trailing_bits_zero(packed, k, 1, r)
        negative = f.unpack_bits(packed, k, 1).astype(bool)
        values = np.where(negative, -scale[0], scale[0]).astype(np.float32)
    else:
        raise r.fail(f"bad header: unknown value dtype tag {tag}")
    f.check_finite(values, "value", r)
    return values


def values_error_bound(v: np.ndarray, tag: int) -> float:
    v = np.asarray(v, np.float64).reshape(-1)
    if tag == VALUE_TAGS["fp32"] or v.size == 0:
        return 0.0
    if tag == VALUE_TAGS["fp16"]:
        return l2(2.0**-11 * np.abs(v) + 2.0**-25 + np.maximum(np.abs(v) - FP16_MAX, 0))
    if tag == VALUE_TAGS["sign"]:  # exact, up to fp32 rounding of the scale
        a = np.abs(v)
        return l2(a - a.mean()) + 4 * float(np.finfo(np.float32).eps) * l2(v)
    return quantise_error_bound(v, 8, 0)


# ------------------------------------------------------------------ positions
def gap_tag(max_gap: int) -> int:
    for tag, dt in INDEX_GAP_DTYPES.items():
        if max_gap <= np.iinfo(np.dtype(dt)).max:
            return tag
    raise ValueError(f"index gap {max_gap} does not fit in 32 bits")


def rice_gaps(idx: np.ndarray) -> np.ndarray:
    """The non-negative gaps Rice coding codes: ``i_0``, then ``i_j - i_{j-1} - 1``."""
    idx = np.asarray(idx, np.int64)
    return np.diff(idx, prepend=-1) - 1


def rice_nbytes(k: int, b: int, quotient_sum: int) -> int:
    """Rice code size: the parameter byte, ``k`` b-bit remainders, the unary quotients."""
    return 1 + f.packed_nbytes(k, b) + f.packed_nbytes(quotient_sum + k, 1)


def best_rice(gaps: np.ndarray) -> tuple[int, int]:
    """(parameter b, size in bytes) of the smallest Rice code of ``gaps``."""
    g = np.asarray(gaps, np.int64)
    sizes = [rice_nbytes(g.size, b, int((g >> b).sum())) for b in range(MAX_RICE_PARAM + 1)]
    b = int(np.argmin(sizes))
    return b, sizes[b]


def rice_nbytes_bound(n: int, k: int) -> int:
    """Largest Rice code of any ``k`` sorted indices into ``n``: the gaps sum to at most
    ``n - k``, so the quotients with parameter b sum to at most ``(n - k) >> b``."""
    return min(rice_nbytes(k, b, (n - k) >> b) for b in range(MAX_RICE_PARAM + 1))


def _index_sizes(idx: np.ndarray, n: int) -> dict[int, int]:
    """Bytes of each position code of the sorted indices ``idx`` (index tag -> size; the
    Rice entry at its best parameter)."""
    gaps = np.diff(idx, prepend=0)
    tag = gap_tag(int(gaps.max()) if gaps.size else 0)
    return {tag: idx.size * np.dtype(INDEX_GAP_DTYPES[tag]).itemsize,
            INDEX_BITMAP: f.packed_nbytes(n, 1),
            INDEX_RICE: best_rice(rice_gaps(idx))[1]}


def index_nbytes(n: int, k: int, idx: np.ndarray | None = None) -> int:
    """Bytes of the position code of ``k`` sorted indices into ``n``: exact for the
    indices ``idx``; without them, the largest over all k-subsets."""
    if idx is not None:
        return min(_index_sizes(np.asarray(idx), n).values())
    gap_bytes = k * np.dtype(INDEX_GAP_DTYPES[gap_tag(max(n - 1, 0))]).itemsize
    return min(gap_bytes, f.packed_nbytes(n, 1), rice_nbytes_bound(n, k))


def encode_rice(gaps: np.ndarray, b: int) -> list:
    """Rice code of non-negative ``gaps``: [b (u8), packed remainders, packed unary]."""
    g = np.asarray(gaps, np.int64)
    q = g >> b
    remainders = f.pack_bits((g & ((1 << b) - 1)).astype(np.uint32), b) if b else \
        np.zeros(0, np.uint8)
    unary = np.ones(int(q.sum()) + g.size, np.uint8)  # q ones, then a zero, per gap
    unary[np.cumsum(q + 1) - 1] = 0
    return [np.array([b], np.uint8), remainders, np.packbits(unary, bitorder="little")]


def decode_rice(r: f.Reader, k: int) -> np.ndarray:
    """Gaps of a Rice code that fills the rest of the buffer (inverse of encode_rice)."""
    (b,) = r.take(1)
    b = int(b)
    if b > MAX_RICE_PARAM:
        raise r.fail(f"bad header: Rice parameter {b} > {MAX_RICE_PARAM}")
    packed = r.take(f.packed_nbytes(k, b))
    f.check_trailing_bits_zero(packed, k, b, r)
    low = (f.unpack_bits(packed, k, b).astype(np.int64) if b
           else np.zeros(k, np.int64))
    unary = r.take(len(r.buf) - r.pos)
    bits = np.unpackbits(unary, bitorder="little")
    zeros = np.flatnonzero(bits == 0)[:k]
    if zeros.size < k:
        raise r.fail(f"wrong length: the Rice code ends after {zeros.size} of {k} positions")
    used = int(zeros[-1]) + 1 if k else 0
    if f.packed_nbytes(used, 1) != unary.size:
        raise r.fail(f"wrong length: {unary.size - f.packed_nbytes(used, 1)} byte(s) after "
                     f"the Rice code's last position")
    if bits[used:].any():
        raise r.fail("bad encoding: non-zero padding bits")
    q = np.diff(zeros, prepend=-1) - 1
    return (q << b) | low


def encode_indices(idx: np.ndarray, n: int) -> tuple[int, list]:
    """(index tag, byte parts) of the smallest code of sorted unique indices ``idx``
    (on a tie: Rice, then the bitmap, then fixed-width gaps)."""
    sizes = _index_sizes(idx, n)
    smallest = min(sizes.values())
    if sizes[INDEX_RICE] == smallest:
        rg = rice_gaps(idx)
        return INDEX_RICE, encode_rice(rg, best_rice(rg)[0])
    if sizes[INDEX_BITMAP] == smallest:
        mask = np.zeros(n, np.uint8)
        mask[idx] = 1
        return INDEX_BITMAP, [f.pack_bits(mask, 1)]
    tag = next(t for t in sizes if t in INDEX_GAP_DTYPES)
    gaps = np.diff(idx, prepend=0)
    return tag, [gaps.astype(INDEX_GAP_DTYPES[tag]).view(np.uint8)]


def decode_indices(r: f.Reader, n: int, k: int, tag: int) -> np.ndarray:
    """Indices of a position code; it is the last field of its buffer."""
    if tag == INDEX_BITMAP:
        packed = r.take(f.packed_nbytes(n, 1))
        f.check_trailing_bits_zero(packed, n, 1, r)
        idx = np.flatnonzero(f.unpack_bits(packed, n, 1))
        if idx.size != k:
            raise r.fail(f"bad encoding: bitmap marks {idx.size} positions, header says {k}")
        return idx
    if tag == INDEX_RICE:
        idx = np.cumsum(decode_rice(r, k) + 1) - 1
        if k and idx[-1] >= n:
            raise r.fail(f"bad encoding: index {int(idx[-1])} out of range for {n} values")
        return idx
    if tag not in INDEX_GAP_DTYPES:
        raise r.fail(f"bad header: unknown index dtype tag {tag}")
    gaps = r.array(INDEX_GAP_DTYPES[tag], k).astype(np.int64)
    if k > 1 and (gaps[1:] < 1).any():
        raise r.fail("bad encoding: indices not strictly increasing")
    idx = np.cumsum(gaps)
    if k and idx[-1] >= n:
        raise r.fail(f"bad encoding: index {int(idx[-1])} out of range for {n} values")
    return idx


@dataclasses.dataclass(frozen=True)
class SparseCodec(TensorCodec):
    """What top-k and rand-k share: the kept ``fraction`` and how values are coded."""

    fraction: float = 0.01
    values: str = "fp32"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.values not in VALUE_TAGS:
            raise ValueError(f"values must be one of {', '.join(VALUE_TAGS)}")

    def _check_header(self, r: f.Reader, n: int, k: int, vtag: int) -> None:
        """The kept count and value coding in a payload must be this run's."""
        if k != keep_count(n, self.fraction):
            raise r.fail(f"bad header: {k} values, this run keeps "
                         f"{keep_count(n, self.fraction)} of {n}")
        if vtag != VALUE_TAGS[self.values]:
            name = VALUE_NAMES.get(vtag)
            if name is None:
                raise r.fail(f"bad header: unknown value dtype tag {vtag}")
            raise r.fail(f"bad header: values coded as {name}, this run uses {self.values}")

    def build(self, params: CodecParams) -> SparseCodec:
        return dataclasses.replace(self, fraction=float(params.sparse_fraction),
                                   values=str(params.sparse_values))
