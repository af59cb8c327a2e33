"""Server-side Flower glue of the codecs: compressed broadcast, upload metrics.

The codecs themselves (``fedpers.codecs``) are pure numpy. The client's side (the
upload codec with its error-feedback residual in the Context state, the extra reply
records, decoding the broadcast) is :class:`fedpers.client_pipeline.EncodeStep` and
:func:`fedpers.client_pipeline.decode_broadcast`. This module holds the server's:

- :func:`encode_broadcast`: replaces the ``"arrays"`` record of the
  outgoing messages by its ``codec-down`` encoding. The server keeps the exact
  model; clients train from (and evaluate) the decoded broadcast. With a lossy
  upload codec the client's update is taken against what it received and the
  server adds it to its exact model, so downlink error does not accumulate there.
- :class:`UploadStats`: ``comm/compression_ratio`` and
  ``comm/update_distortion`` of a round's accepted train replies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Message

from fedpers.arrays import record_to_numpy, to_array_record
from fedpers.byte_count import Sizer, content_bytes
from fedpers.codecs import Codec
from fedpers.codecs.update import encode_weights

#: the reply metric a client's lossy upload reports (its EncodeStep writes it:
#: :data:`fedpers.client_pipeline.DISTORTION_METRIC`)
DISTORTION_METRIC = "codec-distortion"


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
        content[key] = to_array_record(encode_weights(codec, arrays, rng))


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
