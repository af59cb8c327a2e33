"""Upload codecs: pure numpy, no Flower import. One codec per file.

A codec turns the client's upload (a dict of named float arrays) into the dict of
arrays that is actually sent, and back. Lossy codecs compress the model update,
not the weights (:mod:`fedpers.codecs.update`); every encoded tensor is one
``uint8`` array with a small header (:mod:`fedpers.codecs._format`). The bytes
that cross the wire are measured on the sent form (``fedpers.comm``), so a
codec's saving shows in ``comm/bytes_up`` without the codec reporting anything
itself; ``encoded_nbytes(shape)`` gives the same size analytically.

Entries hold default parameters; :func:`build_codec` applies the run config's
(``quant-block-size``, ``qsgd-levels``, ``sparse-fraction``, ``sparse-values``).
"""

from __future__ import annotations

from typing import Any

from fedpers.codecs._sparse import VALUE_TAGS
from fedpers.codecs.base import Codec, CodecError
from fedpers.codecs.fp16 import FP16Codec
from fedpers.codecs.identity import IdentityCodec
from fedpers.codecs.qsgd import QSGDCodec
from fedpers.codecs.randk import RandKCodec
from fedpers.codecs.sign import ScaledSignCodec
from fedpers.codecs.topk import TopKCodec
from fedpers.codecs.uniform import UniformQuantizer

CODECS: dict[str, Codec] = {
    "none": IdentityCodec(),
    "fp16": FP16Codec(),
    "q8": UniformQuantizer(bits=8),
    "q4": UniformQuantizer(bits=4),
    "q2": UniformQuantizer(bits=2),
    "qsgd": QSGDCodec(),
    "sign": ScaledSignCodec(),
    "topk": TopKCodec(),
    "randk": RandKCodec(),
}

# Codecs the server may apply to its broadcast (``codec-down``).
DOWN_CODECS = ("none", "fp16", "q8")
# How top-k / rand-k code the values they keep (``sparse-values``).
SPARSE_VALUES = tuple(VALUE_TAGS)


def build_codec(cfg: Any, name: str | None = None) -> Codec:
    """The codec ``name`` (default: ``cfg.codec``) with the run config's parameters."""
    key = cfg.codec if name is None else name
    if key not in CODECS:
        raise KeyError(f"unknown codec {key!r}; valid names: {', '.join(sorted(CODECS))}")
    return CODECS[key].configure(cfg)


__all__ = ["CODECS", "DOWN_CODECS", "SPARSE_VALUES", "Codec", "CodecError", "build_codec"]
