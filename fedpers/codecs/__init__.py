"""Upload codecs: pure numpy, no Flower import. One codec per file.

A codec turns the client's upload (a dict of named float arrays) into the dict of
arrays that is actually sent, and back. The bytes that cross the wire are
measured on the sent form (``fedpers.comm``), so a codec's saving shows in
``comm/bytes_up`` without the codec reporting anything itself.
"""

from fedpers.codecs.base import Codec
from fedpers.codecs.identity import IdentityCodec

CODECS: dict[str, Codec] = {
    "none": IdentityCodec(),
}

__all__ = ["CODECS", "Codec"]
