"""``codec=topk``: keep the k = ceil(``sparse-fraction`` n) largest-magnitude values.

Aji & Heafield, arXiv 1704.05021; Deep Gradient Compression, Lin et al., arXiv
1712.01887. **Biased** (a contraction: the dropped part has
``||x - C(x)||^2 <= (1 - k/n) ||x||^2``); meant with ``error-feedback = true``,
which sends the dropped mass later. Error, for every input: the L2 norm of the
n - k smallest values, combined with the error of the value coding
(``sparse-values``: fp32 exact, fp16, or q8).

Size: 12-byte header (common header with value and index tags + u32 k) + the
values (4k, 2k, 8 + k or 4 + ceil(k / 8) bytes) + the positions, the smallest of:
gaps between sorted indices in the smallest of u8/u16/u32 that holds the largest
gap (``k`` x 1, 2 or 4 bytes), a ``ceil(n / 8)``-byte bitmap, or the gaps'
Golomb-Rice code (``fedpers.codecs._sparse``; about ``log2(n / k) + 2`` bits per
index). :meth:`TopKCodec.nbytes` gives the upper bound over all positions;
:meth:`TopKCodec.nbytes_given` the exact size for given positions.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

import fedpers.codecs._format as f
import fedpers.codecs._sparse as sp


@dataclasses.dataclass(frozen=True)
class TopKCodec(sp.SparseCodec):

    name: ClassVar[str] = "topk"
    tag: ClassVar[int] = 5

    def select(self, x: np.ndarray) -> np.ndarray:
        """Sorted indices of the k largest |x| (ties broken by numpy's partition)."""
        n, k = x.size, sp.keep_count(x.size, self.fraction)
        if k >= n:
            return np.arange(n)
        return np.sort(np.argpartition(-np.abs(x), k - 1)[:k])

    def _encode(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        idx = self.select(x)
        vtag = sp.VALUE_TAGS[self.values]
        itag, index_parts = sp.encode_indices(idx, x.size)
        return f.join([f.header(self.tag, x.size, a=vtag, b=itag), f.U32.pack(idx.size),
                       *sp.encode_values(x[idx], vtag, rng), *index_parts])

    def _decode(self, buf: np.ndarray, n: int, name: str) -> np.ndarray:
        r = f.Reader(buf, name)
        vtag, itag = r.header(self.tag, self.name, n)
        (k,) = r.unpack(f.U32)
        self._check_header(r, n, k, vtag)
        values = sp.decode_values(r, k, vtag)
        idx = sp.decode_indices(r, n, k, itag)
        r.finish()
        out = np.zeros(n, np.float32)
        out[idx] = values
        return out

    def _size(self, n: int, idx: np.ndarray | None) -> int:
        k = sp.keep_count(n, self.fraction)
        return (f.HEADER.size + f.U32.size + sp.values_nbytes(k, sp.VALUE_TAGS[self.values])
                + sp.index_nbytes(n, k, idx))

    def nbytes_given(self, n: int, idx: np.ndarray) -> int:
        """Exact size when the kept positions are the sorted indices ``idx``."""
        return self._size(n, idx)

    def nbytes(self, n: int) -> int:
        """Upper bound over all positions; exact: :meth:`nbytes_given`."""
        return self._size(n, None)

    def error_bound(self, x: np.ndarray) -> float:
        x = np.asarray(x, np.float32).reshape(-1)
        idx = self.select(x)
        x64 = x.astype(np.float64)
        dropped_sq = float((x64 * x64).sum() - (x64[idx] ** 2).sum())
        vb = sp.values_error_bound(x[idx], sp.VALUE_TAGS[self.values])
        slack = 8 * float(np.finfo(np.float32).eps) * float(np.linalg.norm(x64))
        return float(np.sqrt(max(dropped_sq, 0.0) + vb * vb)) + slack
