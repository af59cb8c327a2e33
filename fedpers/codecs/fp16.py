"""``codec=fp16``: the update in IEEE half precision (2 bytes per value).

Deterministic round-to-nearest, so biased only by rounding. Error: each value in
fp16's normal range has relative error at most 2^-11; below it (|x| < 2^-14) the
absolute error is at most 2^-25; values beyond +-65504 are clipped to +-65504
(an update that large has diverged; error feedback, if on, keeps the excess).
Size: 8-byte header + ``2 n``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

import fedpers.codecs._format as f
from fedpers.codecs.base import TensorCodec, l2

FP16_MAX = float(np.finfo(np.float16).max)


@dataclasses.dataclass(frozen=True)
class FP16Codec(TensorCodec):
    name: ClassVar[str] = "fp16"
    tag: ClassVar[int] = 1

    def _encode(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        body = np.clip(x, -FP16_MAX, FP16_MAX).astype("<f2")
        return f.join([f.header(self.tag, x.size), body])

    def _decode(self, buf: np.ndarray, n: int, name: str) -> np.ndarray:
        r = f.Reader(buf, name)
        r.header(self.tag, self.name, n)
        values = r.array("<f2", n)
        r.finish()
        f.check_finite(values, "value", r)
        return values.astype(np.float32)

    def nbytes(self, n: int) -> int:
        return f.HEADER.size + 2 * n

    def error_bound(self, x: np.ndarray) -> float:
        x = np.asarray(x, np.float64).reshape(-1)
        clipped = np.abs(x) - np.minimum(np.abs(x), FP16_MAX)
        per = 2.0**-11 * np.minimum(np.abs(x), FP16_MAX) + 2.0**-25 + clipped
        return l2(per)
