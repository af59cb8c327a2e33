"""The wire format shared by the tensor codecs: header, bit packing, stochastic rounding.

Every encoded tensor is one 1-D ``uint8`` array: an 8-byte header, the codec's own
fixed fields, then its body. The header is little-endian::

    magic (u8 = 0xFC) | codec tag (u8) | field a (u8) | field b (u8) | n elements (u32)

``a`` and ``b`` are small codec-specific fields (bit width, value or index tag).
Parsing goes through :class:`Reader`, which raises :class:`CodecError` on a short
buffer, trailing bytes or a bad header, so a malformed payload never reaches numpy
as a cryptic error.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from fedpers.codecs.base import CodecError

MAGIC = 0xFC
HEADER = struct.Struct("<BBBBI")
U32 = struct.Struct("<I")
F32 = struct.Struct("<f")
MAX_ELEMENTS = 2**32 - 1


def header(tag: int, n: int, a: int = 0, b: int = 0) -> bytes:
    if n > MAX_ELEMENTS:
        raise ValueError(f"tensor of {n} elements is too large for the codec header (< 2^32)")
    return HEADER.pack(MAGIC, tag, a, b, n)


def join(parts: list[bytes | np.ndarray]) -> np.ndarray:
    """Concatenate byte strings and arrays (as their raw bytes) into one uint8 array."""
    views = [np.frombuffer(p, np.uint8) if isinstance(p, bytes)
             else np.ascontiguousarray(p).reshape(-1).view(np.uint8) for p in parts]
    return np.concatenate(views) if views else np.zeros(0, np.uint8)


class Reader:
    """Sequential, bounds-checked reading of one encoded tensor."""

    def __init__(self, buf: np.ndarray, name: str) -> None:
        if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 1:
            got = (f"{buf.dtype} array of shape {buf.shape}" if isinstance(buf, np.ndarray)
                   else type(buf).__name__)
            raise CodecError(f"array {name!r}: expected 1-D uint8 encoded bytes, got {got}")
        self.buf = buf
        self.name = name
        self.pos = 0

    def fail(self, what: str) -> CodecError:
        return CodecError(f"array {self.name!r}: {what}")

    def take(self, nbytes: int) -> np.ndarray:
        end = self.pos + nbytes
        if nbytes < 0 or end > len(self.buf):
            raise self.fail(f"wrong length: truncated at byte {len(self.buf)}, needs at least "
                            f"{end}")
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size).tobytes())

    def array(self, dtype: str, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        return self.take(dt.itemsize * count).view(dt)

    def header(self, tag: int, codec_name: str, n_expected: int) -> tuple[int, int]:
        """Read and check the common header; return the fields (a, b)."""
        magic, got_tag, a, b, n = self.unpack(HEADER)
        if magic != MAGIC:
            raise self.fail(f"bad header: magic byte {magic:#x}, expected {MAGIC:#x}")
        if got_tag != tag:
            raise self.fail(f"bad header: codec tag {got_tag}, expected {tag} ({codec_name})")
        if n != n_expected:
            raise self.fail(f"bad header: {n} elements, the parameter has {n_expected}")
        return a, b

    def finish(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail(f"wrong length: {len(self.buf)} bytes, the encoding uses "
                            f"{self.pos} ({len(self.buf) - self.pos} trailing)")


# ------------------------------------------------------------------ bit packing
def packed_nbytes(n: int, width: int) -> int:
    """Bytes that ``n`` codes of ``width`` bits take when packed."""
    return math.ceil(n * width / 8)


def pack_bits(codes: np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned integer codes (< 2**width) densely, little-endian bit order.

    Fast paths for widths 1, 2, 4, 8 and 16; any other width 1..16 goes through a
    bit matrix. The result has exactly :func:`packed_nbytes` bytes.
    """
    n = codes.size
    if width == 8:
        return codes.astype(np.uint8)
    if width == 16:
        return codes.astype("<u2").view(np.uint8)
    if width == 1:
        return np.packbits(codes.astype(np.uint8), bitorder="little")
    if width in (2, 4):
        per = 8 // width
        flat = np.zeros(packed_nbytes(n, width) * per, np.uint8)
        flat[:n] = codes
        c = flat.reshape(-1, per)
        out = c[:, 0].copy()
        for j in range(1, per):
            out |= c[:, j] << np.uint8(j * width)
        return out
    if not 1 <= width <= 16:
        raise ValueError(f"bit width {width} is outside 1..16")
    bits = ((codes.astype(np.uint32)[:, None] >> np.arange(width, dtype=np.uint32)) & 1)
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, n: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``n`` codes as uint8 (width <= 8) or uint16."""
    if width == 8:
        return packed[:n].copy()
    if width == 16:
        return packed.view("<u2")[:n].astype(np.uint16)
    if width == 1:
        return np.unpackbits(packed, count=n, bitorder="little")
    if width in (2, 4):
        per = 8 // width
        mask = np.uint8((1 << width) - 1)
        out = np.empty((packed.size, per), np.uint8)
        for j in range(per):
            out[:, j] = (packed >> np.uint8(j * width)) & mask
        return out.reshape(-1)[:n]
    bits = np.unpackbits(packed, count=n * width, bitorder="little").reshape(n, width)
    codes = bits.astype(np.uint32) @ (np.uint32(1) << np.arange(width, dtype=np.uint32))
    return codes.astype(np.uint8 if width <= 8 else np.uint16)


def check_trailing_bits_zero(packed: np.ndarray, n: int, width: int, r: Reader) -> None:
    """Padding bits after the last code must be zero (one encoding per tensor)."""
    used = n * width
    if used % 8 and packed.size and packed[-1] >> np.uint8(used % 8):
        raise r.fail("bad encoding: non-zero padding bits")


# ------------------------------------------------------------------ blocks
def num_blocks(n: int, block: int) -> int:
    """Blocks of ``block`` elements covering ``n`` (``block`` 0 = one block)."""
    if n == 0:
        return 0
    return 1 if block <= 0 or block >= n else math.ceil(n / block)


def blocked(x: np.ndarray, block: int) -> np.ndarray:
    """``x`` as a (blocks, size) matrix, the last block padded with its own last value."""
    n = x.size
    nb = num_blocks(n, block)
    size = n if nb <= 1 else block
    pad = nb * size - n
    if pad:
        x = np.concatenate([x, np.full(pad, x[-1], dtype=x.dtype)])
    return x.reshape(nb, size)


def block_sizes(n: int, block: int) -> np.ndarray:
    nb = num_blocks(n, block)
    if nb <= 1:
        return np.array([n] if nb else [], dtype=np.int64)
    sizes = np.full(nb, block, dtype=np.int64)
    sizes[-1] = n - block * (nb - 1)
    return sizes


def block_sums(v: np.ndarray, block: int) -> np.ndarray:
    """Sum of ``v`` over each block (float64)."""
    n = v.size
    nb = num_blocks(n, block)
    if nb == 0:
        return np.zeros(0, np.float64)
    size = n if nb == 1 else block
    return np.add.reduceat(v.astype(np.float64), np.arange(0, n, size))


def stochastic_round(t: np.ndarray, rng: np.random.Generator, top: int) -> np.ndarray:
    """Round ``t`` (in [0, top]) down or up at random so that E[result] = t."""
    u = rng.random(t.shape, dtype=np.float32)
    return np.clip(np.floor(t + u), 0, top)


def check_finite(values: np.ndarray, what: str, r: Reader) -> None:
    if not np.isfinite(values).all():
        raise r.fail(f"bad header: non-finite {what}")
