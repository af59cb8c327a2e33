"""``codec=randk``: keep k = ceil(``sparse-fraction`` n) values at random positions.

The positions are a uniformly random k-subset drawn from a 64-bit seed that the
client takes from its seeded generator; only the seed is sent (8 bytes), and the
server draws the same subset (the k smallest of ``n`` raw PCG64 outputs, a stream
numpy keeps stable across versions). Values are sent **unscaled**: biased,
E[C(x)] = (k/n) x, a contraction with E||x - C(x)||^2 = (1 - k/n) ||x||^2 — the
compressor of "Sparsified SGD with memory" (Stich et al., arXiv 1809.07599), meant
with ``error-feedback = true``. Error, for every draw: the L2 norm of the dropped
values (at most that of the n - k smallest), with the value coding's error
(``sparse-values``: fp32 exact, fp16, or q8).

Size: 20-byte header (common header + u32 k + u64 seed) + the values (4k, 2k or
8 + k bytes).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import ClassVar

import numpy as np

import fedpers.codecs._format as f
import fedpers.codecs._sparse as sp

PARAMS = struct.Struct("<IQ")  # k, seed


def random_subset(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted uniformly random k of range(n), a function of (n, k, seed) only."""
    if k >= n:
        return np.arange(n)
    keys = np.random.PCG64(seed).random_raw(n)
    return np.sort(np.argpartition(keys, k - 1)[:k])


@dataclasses.dataclass(frozen=True)
class RandKCodec(sp.SparseCodec):

    name: ClassVar[str] = "randk"
    tag: ClassVar[int] = 6

    def _encode(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, k = x.size, sp.keep_count(x.size, self.fraction)
        seed = int(rng.integers(0, 2**63))
        idx = random_subset(n, k, seed)
        vtag = sp.VALUE_TAGS[self.values]
        return f.join([f.header(self.tag, n, a=vtag), PARAMS.pack(k, seed),
                       *sp.encode_values(x[idx], vtag, rng)])

    def _decode(self, buf: np.ndarray, n: int, name: str) -> np.ndarray:
        r = f.Reader(buf, name)
        vtag, _ = r.header(self.tag, self.name, n)
        k, seed = r.unpack(PARAMS)
        self._check_header(r, n, k, vtag)
        values = sp.decode_values(r, k, vtag)
        r.finish()
        out = np.zeros(n, np.float32)
        out[random_subset(n, k, seed)] = values
        return out

    def nbytes(self, n: int) -> int:
        k = sp.keep_count(n, self.fraction)
        return f.HEADER.size + PARAMS.size + sp.values_nbytes(k, sp.VALUE_TAGS[self.values])

    def error_bound(self, x: np.ndarray) -> float:
        x64 = np.asarray(x, np.float64).reshape(-1)
        k = sp.keep_count(x64.size, self.fraction)
        sq = np.sort(x64 * x64)
        dropped_max = float(sq[k:].sum()) if k < sq.size else 0.0
        vb = sp.values_error_bound(x64, sp.VALUE_TAGS[self.values])
        slack = 8 * float(np.finfo(np.float32).eps) * float(np.sqrt(sq.sum()))
        return float(np.sqrt(dropped_max + vb * vb)) + slack
