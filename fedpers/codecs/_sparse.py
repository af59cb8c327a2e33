"""What top-k and rand-k share: how many values to keep, how the kept values and
their positions are coded.

Values (``sparse-values``): ``fp32`` (4 bytes each, exact), ``fp16`` (2 bytes,
relative error <= 2^-11), ``q8`` (one fp32 ``lo`` and ``step`` for the k values +
1 byte each, stochastic uniform rounding: unbiased given the positions).

Positions (top-k only; rand-k regenerates them from a seed): the sorted indices as
gaps (first index, then differences) in the smallest unsigned type that holds the
largest gap (u8, u16 or u32), or a bitmap of ``ceil(n / 8)`` bytes when that is
smaller.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from fedpers.codecs import _format as f
from fedpers.codecs.base import TensorCodec, l2
from fedpers.codecs.fp16 import FP16_MAX
from fedpers.codecs.uniform import dequantise, quantise, quantise_error_bound

VALUE_TAGS = {"fp32": 0, "fp16": 1, "q8": 2}
VALUE_NAMES = {v: k for k, v in VALUE_TAGS.items()}
INDEX_BITMAP = 0
INDEX_GAP_DTYPES = {1: "<u1", 2: "<u2", 3: "<u4"}  # index tag -> gap dtype


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
    return 8 + k


def encode_values(v: np.ndarray, tag: int, rng: np.random.Generator) -> list:
    if tag == VALUE_TAGS["fp32"]:
        return [v.astype("<f4")]
    if tag == VALUE_TAGS["fp16"]:
        return [np.clip(v, -FP16_MAX, FP16_MAX).astype("<f2")]
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
    return quantise_error_bound(v, 8, 0)


# ------------------------------------------------------------------ positions
def gap_tag(max_gap: int) -> int:
    for tag, dt in INDEX_GAP_DTYPES.items():
        if max_gap <= np.iinfo(np.dtype(dt)).max:
            return tag
    raise ValueError(f"index gap {max_gap} does not fit in 32 bits")


def index_nbytes(n: int, k: int, max_gap: int) -> int:
    """Bytes of the position code of ``k`` of ``n`` indices whose largest gap is ``max_gap``."""
    gaps = k * np.dtype(INDEX_GAP_DTYPES[gap_tag(max_gap)]).itemsize
    return min(gaps, f.packed_nbytes(n, 1))


def encode_indices(idx: np.ndarray, n: int) -> tuple[int, np.ndarray]:
    """(index tag, bytes) for sorted unique indices ``idx`` into ``n`` values."""
    gaps = np.diff(idx, prepend=0)
    tag = gap_tag(int(gaps.max()) if gaps.size else 0)
    width = np.dtype(INDEX_GAP_DTYPES[tag]).itemsize
    if f.packed_nbytes(n, 1) < idx.size * width:
        mask = np.zeros(n, np.uint8)
        mask[idx] = 1
        return INDEX_BITMAP, f.pack_bits(mask, 1)
    return tag, gaps.astype(INDEX_GAP_DTYPES[tag]).view(np.uint8)


def decode_indices(r: f.Reader, n: int, k: int, tag: int) -> np.ndarray:
    if tag == INDEX_BITMAP:
        packed = r.take(f.packed_nbytes(n, 1))
        f.check_trailing_bits_zero(packed, n, 1, r)
        idx = np.flatnonzero(f.unpack_bits(packed, n, 1))
        if idx.size != k:
            raise r.fail(f"bad encoding: bitmap marks {idx.size} positions, header says {k}")
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

    def configure(self, cfg: Any) -> SparseCodec:
        return dataclasses.replace(self, fraction=float(cfg.sparse_fraction),
                                   values=str(cfg.sparse_values))
