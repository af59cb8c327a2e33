"""Flower glue of the codecs (issue 6): client upload, residual state, broadcast, metrics.

The codecs themselves (``fedpers.codecs``) are pure numpy; this module is the
only codec code that touches Flower records:

- :func:`encode_reply_arrays` (client): the shared part of the trained model ->
  the ``ArrayRecord`` of the reply, with the error-feedback residual kept in the
  client's Context state under ``"ef-residual"`` and the update's distortion as a
  reply metric (``codec-distortion``).
- :func:`encode_extra_record` (client): a strategy's extra reply record (SCAFFOLD's
  control update) through the same codec, as an update against zero, with its own
  error-feedback residual (``"ef-residual/<record>"``); the server's reply checks
  (:func:`fedpers.screening.check_extra_records`) decode it.
- :func:`received_arrays` (client): the broadcast as numpy, decoded when the
  server compresses it (``codec-down``).
- :func:`encode_broadcast` (server): replaces the ``"arrays"`` record of the
  outgoing messages by its ``codec-down`` encoding. The server keeps the exact
  model; clients train from (and evaluate) the decoded broadcast. With a lossy
  upload codec the client's update is taken against what it received and the
  server adds it to its exact model, so downlink error does not accumulate there.
- :class:`UploadStats` (server): ``comm/compression_ratio`` and
  ``comm/update_distortion`` of a round's accepted train replies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from fedpers.arrays import record_to_numpy, to_array_record
from fedpers.byte_count import Sizer, content_bytes
from fedpers.codecs import Codec, build_codec
from fedpers.codecs.update import (
    EncodedUpdate,
    decode_weights,
    encode_update,
    encode_weights,
)

EF_STATE_KEY = "ef-residual"
DISTORTION_METRIC = "codec-distortion"


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return to_array_record(arrays)


# ------------------------------------------------------------------ client
def load_residual(state: RecordDict, key: str = EF_STATE_KEY
                  ) -> dict[str, np.ndarray] | None:
    if key not in state.array_records:
        return None
    return record_to_numpy(state.array_records[key])


def store_residual(state: RecordDict, residual: dict[str, np.ndarray] | None,
                   key: str = EF_STATE_KEY) -> None:
    if residual is not None:
        state[key] = _record(residual)


def encode_reply_arrays(cfg: Any, shared: dict[str, np.ndarray], broadcast: ArrayRecord,
                        reference: dict[str, np.ndarray], rng: np.random.Generator,
                        state: RecordDict) -> tuple[ArrayRecord, dict[str, float]]:
    """The reply's ArrayRecord and the extra reply metrics (none for ``codec = none``).

    ``broadcast`` is the model record the client received (decoded here when
    ``codec-down`` compressed it; ``reference`` gives its names, shapes and dtypes).
    """
    codec = build_codec(cfg)
    ef = bool(cfg.error_feedback) and codec.lossy
    received = received_arrays(cfg, broadcast, reference) if codec.lossy else {}
    up: EncodedUpdate = encode_update(codec, shared, received, rng,
                                      residual=load_residual(state) if ef else None,
                                      error_feedback=ef)
    if ef:
        store_residual(state, up.residual)
    metrics = {} if up.distortion is None else {DISTORTION_METRIC: up.distortion}
    return _record(up.payload), metrics


def _zeros(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.zeros_like(v) for k, v in arrays.items()}


def encode_extra_record(cfg: Any, name: str, arrays: dict[str, np.ndarray],
                        rng: np.random.Generator, state: RecordDict) -> ArrayRecord:
    """A strategy's extra reply record (e.g. SCAFFOLD's control update ``Δc_i``)
    through the upload codec: already a difference, so it is encoded against zero,
    with its own error-feedback residual in the Context state. Sent as it is when the
    codec is lossless."""
    codec = build_codec(cfg)
    if not codec.lossy:
        return _record(arrays)
    ef = bool(cfg.error_feedback)
    key = f"{EF_STATE_KEY}/{name}"
    up = encode_update(codec, arrays, _zeros(arrays), rng,
                       residual=load_residual(state, key) if ef else None,
                       error_feedback=ef)
    if ef:
        store_residual(state, up.residual, key)
    return _record(up.payload)


def received_arrays(cfg: Any, record: ArrayRecord,
                    reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The broadcast as numpy arrays, decoded if the server compressed it."""
    payload = record_to_numpy(record)
    if cfg.codec_down == "none":
        return payload
    return decode_weights(build_codec(cfg, cfg.codec_down), payload, reference)


# ------------------------------------------------------------------ server
def encode_broadcast(messages: list[Message], codec: Codec, rng: np.random.Generator,
                     key: str = "arrays") -> None:
    """Encode the ``key`` ArrayRecord of each distinct message content, in place."""
    if not codec.lossy:
        return
    done: set[int] = set()
    for msg in messages:
        content = msg.content
        if id(content) in done or key not in content.array_records:
            continue
        done.add(id(content))
        arrays = record_to_numpy(content.array_records[key])
        content[key] = _record(encode_weights(codec, arrays, rng))


class UploadStats:
    """Per round: raw bytes of the decoded updates vs bytes actually uploaded."""

    def __init__(self, lossy: bool) -> None:
        self.lossy = lossy
        self.raw = 0
        self.sent = 0
        self.distortions: list[float] = []

    def add(self, reply: Message, arrays: dict[str, np.ndarray],
            metrics: dict[str, Any],
            extra: dict[str, dict[str, np.ndarray]] | None = None,
            size: Sizer = content_bytes) -> None:
        """Count one accepted train reply (call before its content is replaced);
        ``extra``: its decoded extra records (SCAFFOLD's control update); ``size``: what
        sizes the reply (the round's :class:`fedpers.byte_count.ReplySizes`)."""
        self.raw += sum(int(a.nbytes) for a in arrays.values())
        self.raw += sum(int(a.nbytes) for rec in (extra or {}).values() for a in rec.values())
        self.sent += size(reply.content)
        if DISTORTION_METRIC in metrics:
            self.distortions.append(float(metrics[DISTORTION_METRIC]))

    def metrics(self) -> dict[str, float]:
        if self.sent == 0:
            return {}
        out = {"comm/compression_ratio": self.raw / self.sent}
        if self.distortions:
            # sorted: the same value whatever order the replies arrived in
            out["comm/update_distortion"] = float(np.mean(sorted(self.distortions)))
        elif not self.lossy:
            out["comm/update_distortion"] = 0.0
        return out
