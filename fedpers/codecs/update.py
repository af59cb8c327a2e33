"""What is compressed: the model update, with optional error feedback.

A lossy codec never sees weights. The client encodes the update of the shared
part, ``local - global`` (the global it received), plus, with error feedback, the
residual it did not manage to send before; the server decodes and adds the update
to its own global model *before* validation, so every strategy aggregates
ordinary weights. Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are
sent as they are. A lossless codec (``none``) sends the weights unchanged.

The encoded tensors of one update travel as **one** ``uint8`` array under the key
:data:`PACKED_KEY` (:func:`pack`): Flower frames every array with about 500 bytes
(object ids, a numpy header), which for a small model is more than a sparse update
itself. The pack is a table (u32 count, then per tensor: u16 name length, the UTF-8
name, u32 encoded length) followed by the encoded tensors; :func:`packed_nbytes`
gives its size.

Error feedback (Seide et al. 2014; Stich et al., arXiv 1809.07599; Karimireddy et
al., arXiv 1901.09847): with ``d_t = u_t + e_{t-1}`` and ``e_t = d_t - C(d_t)``,
the sum of what was sent plus the final residual equals the sum of the updates
(telescoping), so nothing is lost, only delayed.

Pure numpy, no Flower: ``fedpers.client_pipeline.ErrorFeedback`` keeps residuals in
the client's Context state.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from fedpers.codecs._format import Reader, join
from fedpers.codecs.base import Codec, CodecError

PACKED_KEY = "fedpers:encoded"
_COUNT = struct.Struct("<I")
_NAME_LEN = struct.Struct("<H")
_LEN = struct.Struct("<I")


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f"


def pack(encoded: dict[str, np.ndarray]) -> np.ndarray:
    """The encoded tensors as one uint8 array: a name/length table, then the bytes."""
    table: list[bytes | np.ndarray] = [_COUNT.pack(len(encoded))]
    for name, buf in encoded.items():
        raw = name.encode("utf-8")
        table += [_NAME_LEN.pack(len(raw)), raw, _LEN.pack(buf.nbytes)]
    return join(table + list(encoded.values()))


def unpack(blob: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack`; CodecError on a malformed table or length."""
    r = Reader(blob, PACKED_KEY)
    (count,) = r.unpack(_COUNT)
    entries = []
    for _ in range(count):
        (size,) = r.unpack(_NAME_LEN)
        try:
            name = r.take(size).tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise r.fail("bad table: a name is not UTF-8") from exc
        (nbytes,) = r.unpack(_LEN)
        entries.append((name, nbytes))
    out: dict[str, np.ndarray] = {}
    for name, nbytes in entries:
        if name in out:
            raise r.fail(f"bad table: {name!r} twice")
        out[name] = r.take(nbytes)
    r.finish()
    return out


def packed_nbytes(codec: Codec, shapes: dict[str, tuple[int, ...]]) -> int:
    """Bytes of the packed update of float tensors of ``shapes`` (codec sizes + table)."""
    table = _COUNT.size + sum(_NAME_LEN.size + len(k.encode("utf-8")) + _LEN.size
                              for k in shapes)
    return table + sum(codec.encoded_nbytes(s) for s in shapes.values())


def _split(codec: Codec, payload: dict[str, np.ndarray], reference: dict[str, np.ndarray]
           ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(decoded float tensors, the rest) of a packed payload."""
    if PACKED_KEY not in payload:
        raise CodecError(f"no encoded tensors: the payload has no {PACKED_KEY!r} array "
                         f"(was it encoded with codec {codec.name!r}?)")
    parts = unpack(payload[PACKED_KEY])
    rest = {k: v for k, v in payload.items() if k != PACKED_KEY}
    for k in parts:
        if k in rest:
            raise CodecError(f"array {k!r} is both encoded and sent as it is")
        if k in reference and not _is_float(reference[k]):
            raise CodecError(f"array {k!r} is encoded but the parameter is "
                             f"{reference[k].dtype}, not floating point")
    for k in rest:
        if k in reference and _is_float(reference[k]):
            raise CodecError(f"array {k!r} is a floating-point parameter sent unencoded")
    return codec.decode(parts, reference), rest


@dataclass
class EncodedUpdate:
    """One client's upload.

    ``residual``: what error feedback carries to the next round (None when it is
    off or the codec is lossless). ``distortion``: relative L2 error of the decoded
    update, ``||d - D(E(d))|| / ||d||`` over all encoded tensors (0 when ``d`` is
    zero; None for a lossless codec).
    """

    payload: dict[str, np.ndarray]
    residual: dict[str, np.ndarray] | None = None
    distortion: float | None = None


def encode_update(codec: Codec, local: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                  rng: np.random.Generator, residual: dict[str, np.ndarray] | None = None,
                  error_feedback: bool = False) -> EncodedUpdate:
    """Encode the client's shared ``local`` weights against the ``reference`` it received."""
    if not codec.lossy:
        return EncodedUpdate(payload=codec.encode(local, rng))
    residual = residual or {}
    deltas: dict[str, np.ndarray] = {}
    for k, v in local.items():
        if not _is_float(v):
            continue
        if k not in reference:
            raise ValueError(f"shared parameter {k!r} was not in the model the server sent; "
                             f"a lossy codec needs it to form the update")
        d = v.astype(np.float32) - reference[k].astype(np.float32)
        r = residual.get(k)
        if r is not None and r.shape == d.shape:
            d = d + r
        deltas[k] = d
    encoded = codec.encode(deltas, rng)
    decoded = codec.decode(encoded, deltas)
    err_sq = sum(float(np.square(deltas[k] - decoded[k], dtype=np.float64).sum())
                 for k in deltas)
    norm_sq = sum(float(np.square(d, dtype=np.float64).sum()) for d in deltas.values())
    distortion = float(np.sqrt(err_sq / norm_sq)) if norm_sq > 0 else 0.0
    payload = {PACKED_KEY: pack(encoded),
               **{k: v for k, v in local.items() if k not in encoded}}
    new_residual = ({k: (deltas[k] - decoded[k]).astype(np.float32) for k in deltas}
                    if error_feedback else None)
    return EncodedUpdate(payload=payload, residual=new_residual, distortion=distortion)


def decode_update(codec: Codec, payload: dict[str, np.ndarray],
                  reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The client's weights: ``reference`` (the server's global) + the decoded update.

    Raises :class:`CodecError` for a malformed payload; integer buffers and names
    the reference does not know are passed on for the caller's checks.
    """
    if not codec.lossy:
        return codec.decode(payload, reference)
    deltas, rest = _split(codec, payload, reference)
    out = {k: (reference[k].astype(np.float32) + d.astype(np.float32)).astype(reference[k].dtype)
           for k, d in deltas.items()}
    return {**out, **rest}


def encode_weights(codec: Codec, arrays: dict[str, np.ndarray],
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Compress weights themselves (the server's broadcast): floats encoded, rest as is."""
    if not codec.lossy:
        return codec.encode(arrays, rng)
    floats = {k: v for k, v in arrays.items() if _is_float(v)}
    return {PACKED_KEY: pack(codec.encode(floats, rng)),
            **{k: v for k, v in arrays.items() if k not in floats}}


def decode_weights(codec: Codec, payload: dict[str, np.ndarray],
                   reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_weights`; ``reference`` gives names, shapes and dtypes."""
    if not codec.lossy:
        return codec.decode(payload, reference)
    decoded, rest = _split(codec, payload, reference)
    unknown = sorted(set(decoded) - set(reference)) + sorted(set(rest) - set(reference))
    if unknown:
        raise CodecError(f"unexpected array(s) {', '.join(map(repr, unknown))}")
    return {**decoded, **rest}
