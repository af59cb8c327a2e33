"""The client's upload as an ordered list of steps, after local training.

After the personaliser's local update, the shared part of the model (and a strategy's
extra reply records, e.g. SCAFFOLD's control update) goes through the steps that
:func:`build_client_pipeline` assembles, in this order:

1. :class:`AttackStep`: a simulated Byzantine client's transform of its update
   (``attack``; only on the clients :func:`fedpers.attacks.attackers` names);
2. :class:`DpClipStep`: DP-FedAvg's clipping of the update to ``dp-clip-norm``
   (``fedpers.privacy.clip_update``);
3. :class:`EncodeStep`: the upload codec (``codec``), with its error-feedback
   residual (:class:`ErrorFeedback`) in the client's Context state.

Every step has one interface, ``apply(upload, inputs) -> upload``; what it reports goes
into ``upload.metrics`` (sent as reply metrics). A new step is a new class here (or in
its own module) and one line in :func:`build_client_pipeline`.

The broadcast is decoded once per call (:func:`decode_broadcast`) and passed to every
step in :class:`RoundInputs`; codecs are built once per process for a given set of
codec parameters (:func:`codec_for`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedpers.arrays import record_to_numpy, to_array_record
from fedpers.attacks import AttackParams, attackers, poison_update
from fedpers.client_records import ContextRecords
from fedpers.codecs import CODECS, Codec, CodecParams
from fedpers.codecs.update import decode_weights, encode_update
from fedpers.privacy import clip_update
from fedpers.seeds import Stream, derive_seed

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, RecordDict

    from fedpers.config import RunConfig

logger = logging.getLogger(__name__)

#: Context-state record of the upload's error-feedback residual; a strategy's extra
#: record ``name`` keeps its own under ``f"{EF_STATE_KEY}/{name}"``.
EF_STATE_KEY = "ef-residual"
#: reply metric: the relative L2 error the lossy codec made on this update
DISTORTION_METRIC = "codec-distortion"

Arrays = dict[str, np.ndarray]


@dataclass
class Upload:
    """What the client sends back, as it goes through the steps.

    ``shared``: the shared part of the trained model (after :class:`EncodeStep`, the
    encoded payload); ``extra``: a strategy's extra reply records by name; ``metrics``:
    reply metrics the steps add.
    """

    shared: Arrays
    extra: dict[str, Arrays] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundInputs:
    """What every step may read: the call's round, client and decoded broadcast."""

    server_round: int
    partition_id: int
    received: Arrays  # the broadcast as the client decoded it (all names, private too)
    state: Any  # flwr.app.RecordDict: this client's Context state, kept across rounds


class UploadStep(Protocol):
    """One step of the client's upload pipeline."""

    def apply(self, upload: Upload, inputs: RoundInputs) -> Upload:
        """The upload after this step (a new :class:`Upload`, or ``upload`` itself)."""
        ...


@lru_cache(maxsize=16)
def _build_codec(params: CodecParams, name: str) -> Codec:
    codec: Codec = CODECS.build(name, params)
    return codec


def codec_for(cfg: RunConfig, name: str | None = None) -> Codec:
    """The codec ``name`` (default ``cfg.codec``), built once per process for the
    config's codec parameters."""
    params = CodecParams.from_config(cfg)
    return _build_codec(params, params.codec if name is None else name)


def decode_broadcast(cfg: RunConfig, record: ArrayRecord,
                     reference: Arrays) -> Arrays:
    """The broadcast model record as numpy, decoded when the server compressed it
    (``codec-down``); ``reference`` gives names, shapes and dtypes."""
    payload = record_to_numpy(record)
    if cfg.codec_down == "none":
        return payload
    return decode_weights(codec_for(cfg, cfg.codec_down), payload, reference)


class AttackStep:
    """A Byzantine client's poisoned update: ``received + attack(shared - received)``
    (:func:`fedpers.attacks.poison_update`)."""

    stateless = True

    def __init__(self, params: AttackParams) -> None:
        self.params = params

    def apply(self, upload: Upload, inputs: RoundInputs) -> Upload:
        shared = poison_update(self.params, inputs.partition_id, inputs.server_round,
                               upload.shared, inputs.received)
        return Upload(shared, upload.extra, upload.metrics)


class DpClipStep:
    """DP-FedAvg's client half: the update clipped to L2 norm ``clip_norm``."""

    stateless = True

    def __init__(self, clip_norm: float) -> None:
        self.clip_norm = clip_norm

    def apply(self, upload: Upload, inputs: RoundInputs) -> Upload:
        shared, _ = clip_update(upload.shared, inputs.received, self.clip_norm)
        return Upload(shared, upload.extra, upload.metrics)


def _is_residual(name: str) -> bool:
    return name == EF_STATE_KEY or name.startswith(EF_STATE_KEY + "/")


class ErrorFeedback(ContextRecords):
    """The error-feedback residuals of one client, kept in its Context state.

    ``state_dict()`` gives ``{record name: arrays}`` of every residual this client
    holds (the upload's under :data:`EF_STATE_KEY`, each extra record's under
    ``EF_STATE_KEY/<name>``); ``load_state_dict`` puts them back.
    """

    def __init__(self, state: RecordDict) -> None:
        super().__init__(state, _is_residual)

    def get(self, key: str = EF_STATE_KEY) -> Arrays | None:
        if key not in self.state.array_records:
            return None
        return record_to_numpy(self.state.array_records[key])

    def put(self, residual: Arrays | None, key: str = EF_STATE_KEY) -> None:
        if residual is not None:
            self.state[key] = to_array_record(residual)


class EncodeStep:
    """The upload codec: lossy codecs encode the update against what was received
    (with its error-feedback residual); extra records are encoded against zero, each
    with its own residual, and go as they are when the codec is lossless."""

    def __init__(self, codec: Codec, error_feedback: bool, seed: int) -> None:
        self.codec = codec
        self.error_feedback = bool(error_feedback) and codec.lossy
        self.seed = seed

    def state(self, context_state: RecordDict) -> ErrorFeedback:
        """The error-feedback residuals this client keeps."""
        return ErrorFeedback(context_state)

    def apply(self, upload: Upload, inputs: RoundInputs) -> Upload:
        rng = np.random.default_rng(derive_seed(self.seed, Stream.UPLOAD_CODEC,
                                                inputs.server_round, inputs.partition_id))
        memory = ErrorFeedback(inputs.state)
        ef = self.error_feedback
        received = inputs.received if self.codec.lossy else {}
        up = encode_update(self.codec, upload.shared, received, rng,
                           residual=memory.get() if ef else None, error_feedback=ef)
        if ef:
            memory.put(up.residual)
        metrics = dict(upload.metrics)
        if up.distortion is not None:
            metrics[DISTORTION_METRIC] = up.distortion
        extra = {name: self._extra(name, arrays, rng, memory)
                 for name, arrays in upload.extra.items()}
        return Upload(up.payload, extra, metrics)

    def _extra(self, name: str, arrays: Arrays, rng: np.random.Generator,
               memory: ErrorFeedback) -> Arrays:
        if not self.codec.lossy:
            return arrays
        key = f"{EF_STATE_KEY}/{name}"
        zeros = {k: np.zeros_like(v) for k, v in arrays.items()}
        up = encode_update(self.codec, arrays, zeros, rng,
                           residual=memory.get(key) if self.error_feedback else None,
                           error_feedback=self.error_feedback)
        if self.error_feedback:
            memory.put(up.residual, key)
        return up.payload


def build_client_pipeline(cfg: RunConfig, partition_id: int) -> list[UploadStep]:
    """The upload steps of client ``partition_id``, in the order they run."""
    steps: list[UploadStep] = []
    attack = AttackParams.from_config(cfg)
    if partition_id in attackers(attack):
        steps.append(AttackStep(attack))
    if cfg.dp != "none":
        steps.append(DpClipStep(cfg.dp_clip_norm))
    steps.append(EncodeStep(codec_for(cfg), cfg.error_feedback, cfg.seed))
    return steps


def run_pipeline(steps: list[UploadStep], upload: Upload, inputs: RoundInputs) -> Upload:
    """``upload`` through ``steps`` in order."""
    for step in steps:
        upload = step.apply(upload, inputs)
    return upload


__all__ = ["DISTORTION_METRIC", "EF_STATE_KEY", "AttackStep", "DpClipStep", "EncodeStep",
           "ErrorFeedback", "RoundInputs", "Upload", "UploadStep", "build_client_pipeline",
           "codec_for", "decode_broadcast", "run_pipeline"]
