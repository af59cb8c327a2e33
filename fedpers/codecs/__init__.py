"""Upload codecs: pure numpy, no Flower import. One codec per file.

A codec turns the client's upload (a dict of named float arrays) into the dict of
arrays that is actually sent, and back. Lossy codecs compress the model update,
not the weights (:mod:`fedpers.codecs.update`); every encoded tensor is one
``uint8`` array with a small header (:mod:`fedpers.codecs._format`). The bytes
that cross the wire are measured on the sent form (``fedpers.byte_count``), so a
codec's saving shows in ``comm/bytes_up`` without the codec reporting anything
itself; ``encoded_nbytes(shape)`` gives the same size analytically.

Entries are codecs with default parameters; ``entry.build(params)`` (a
:class:`CodecParams`) gives the configured copy, and :func:`build_codec` builds the
run's codec from a run config in one step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpers.codecs._sparse import VALUE_TAGS
from fedpers.codecs.base import Codec, CodecError, CodecParams
from fedpers.codecs.fp16 import FP16Codec
from fedpers.codecs.identity import IdentityCodec
from fedpers.codecs.qsgd import QSGDCodec
from fedpers.codecs.randk import RandKCodec
from fedpers.codecs.sign import ScaledSignCodec
from fedpers.codecs.topk import TopKCodec
from fedpers.codecs.uniform import UniformQuantizer
from fedpers.registry import Registry

if TYPE_CHECKING:
    from fedpers.config import RunConfig

CODECS: Registry[Codec] = Registry("codec", {
    "none": IdentityCodec(),
    "fp16": FP16Codec(),
    "q8": UniformQuantizer(bits=8),
    "q4": UniformQuantizer(bits=4),
    "q2": UniformQuantizer(bits=2),
    "qsgd": QSGDCodec(),
    "sign": ScaledSignCodec(),
    "topk": TopKCodec(),
    "randk": RandKCodec(),
})

# Codecs the server may apply to its broadcast (``codec-down``).
DOWN_CODECS = ("none", "fp16", "q8")
# How top-k / rand-k code the values they keep (``sparse-values``).
SPARSE_VALUES = tuple(VALUE_TAGS)


def build_codec(cfg: RunConfig, name: str | None = None) -> Codec:
    """The codec ``name`` (default: ``cfg.codec``) built from the config's compression
    keys (:class:`CodecParams`).

    Raises
    ------
    ConfigError
        For a name ``CODECS`` does not hold (naming ``codec`` and the valid names).
    """
    params = CodecParams.from_config(cfg)
    return CODECS.build(params.codec if name is None else name, params)


__all__ = ["CODECS", "DOWN_CODECS", "SPARSE_VALUES", "Codec", "CodecError", "CodecParams",
           "build_codec"]
