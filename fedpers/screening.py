"""Screening of the replies: decode each training reply once and check it against the
global model (records, metrics, names, shapes, dtypes, finite values, update norm);
a bad one raises :class:`RejectedReply` with its reason. No MLflow or Flower grid
here; ``fedpers.server_pipeline`` runs it as the first step of a round."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict

from fedpers.arrays import record_to_numpy, to_array_record
from fedpers.codecs.base import Codec, CodecError
from fedpers.codecs.update import decode_update

logger = logging.getLogger(__name__)


# Why a training reply was rejected: each is logged per round as
# ``clients/rejected_<reason>`` (``clients/rejected`` is their sum).
REJECT_REASONS: dict[str, str] = {
    "records": "missing, extra or empty records (ArrayRecord / MetricRecord)",
    "metrics": "a bad num-examples (or more than the client declared at the handshake) "
               "or steps, or a metric that is not finite",
    "codec": "an encoded update that does not decode, or arrays that cannot be read",
    "unknown": "a parameter the global model does not have",
    "shape": "a parameter of the wrong shape",
    "dtype": "a parameter of the wrong dtype",
    "nonfinite": "NaN or Inf values",
    "norm": "an update whose L2 norm exceeds max-update-norm",
    "keys": "parameter names that differ from the other clients' in the round",
}


class RejectedReply(ValueError):
    """A reply that must not be aggregated; the message says why.

    ``reason`` is its category, a key of :data:`REJECT_REASONS`.
    """

    def __init__(self, message: str, reason: str = "records") -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; valid: "
                             f"{', '.join(REJECT_REASONS)}")
        super().__init__(message)
        self.reason = reason


@dataclass
class CheckedReply:
    partition_id: int
    arrays: dict[str, np.ndarray]  # decoded, validated
    metrics: dict[str, Any]
    # the strategy's extra reply records (StrategySpec.extra_records), validated
    extra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # ||arrays - global||_2 over the float arrays, as the screening measured it
    norm: float = float("nan")
    # the reply it was decoded from (its content is replaced for the strategy)
    reply: Message | None = field(default=None, repr=False, compare=False)


def _metrics(reply: Message) -> dict[str, Any]:
    records = reply.content.metric_records
    if len(records) != 1:
        raise RejectedReply(f"expected one MetricRecord, got {len(records)}")
    metrics = dict(next(iter(records.values())))
    n = metrics.get("num-examples")
    if not isinstance(n, (int, float)) or not np.isfinite(n) or n <= 0:
        raise RejectedReply(f"bad num-examples {n!r}", "metrics")
    for k, v in metrics.items():
        vals = v if isinstance(v, list) else [v]
        if not all(np.isfinite(x) for x in vals):
            raise RejectedReply(f"metric {k!r} is not finite", "metrics")
    steps = metrics.get("steps")  # local SGD steps: FedNova divides by them
    if steps is not None and (not isinstance(steps, (int, float)) or steps < 1):
        raise RejectedReply(f"bad steps {steps!r}: a training reply took at least one "
                            f"local step", "metrics")
    return metrics


def check_train_reply(reply: Message, reference: dict[str, np.ndarray], codec: Codec,
                      extra_records: tuple[str, ...] = ()
                      ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Decode and validate one training reply against the global ``reference`` arrays.

    The ArrayRecords named in ``extra_records`` are not the model (check them with
    :func:`check_extra_records`); besides them the reply holds exactly one.
    """
    content = reply.content
    models = [name for name in content.array_records if name not in extra_records]
    if len(models) != 1:
        besides = f" besides {', '.join(extra_records)}" if extra_records else ""
        raise RejectedReply(f"expected one ArrayRecord{besides}, got {len(models)}")
    metrics = _metrics(reply)
    record = content.array_records[models[0]]
    try:
        payload = record_to_numpy(record)
    except Exception as exc:  # noqa: BLE001 - undeserialisable arrays
        raise RejectedReply(f"cannot read arrays: {type(exc).__name__}: {exc}",
                            "codec") from exc
    if not codec.lossy:  # the payload is the weights: name each problem precisely
        _check_arrays(payload, reference, "parameter", same_dtype=True)
    try:
        arrays = decode_update(codec, payload, reference)  # lossy: reference + update
    except CodecError as exc:
        raise RejectedReply(f"malformed encoded update: {exc}", "codec") from exc
    except Exception as exc:  # noqa: BLE001 - a payload that breaks the decoder
        raise RejectedReply(f"cannot decode arrays: {type(exc).__name__}: {exc}",
                            "codec") from exc
    if not arrays:
        raise RejectedReply("empty update")
    _check_arrays(arrays, reference, "parameter", same_dtype=True)
    return arrays, metrics


def _check_arrays(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                  where: str, same_dtype: bool) -> None:
    """Names, shapes, dtypes and finiteness of arrays against the global ``reference``.

    ``same_dtype``: the reference's dtype exactly (model parameters); otherwise any
    floating-point dtype (a strategy's extra records, e.g. control variates).
    """
    for key, arr in arrays.items():
        ref = reference.get(key)
        if ref is None:
            raise RejectedReply(f"{where}: unknown parameter {key!r}", "unknown")
        if arr.shape != ref.shape:
            raise RejectedReply(f"{where} {key!r} has shape {arr.shape}, "
                                f"expected {ref.shape}", "shape")
        if same_dtype and arr.dtype != ref.dtype:
            raise RejectedReply(f"{where} {key!r} has dtype {arr.dtype}, "
                                f"expected {ref.dtype}", "dtype")
        if not same_dtype and arr.dtype.kind != "f":
            raise RejectedReply(f"{where} {key!r} has dtype {arr.dtype}, "
                                f"expected floating point", "dtype")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise RejectedReply(f"{where} {key!r} has NaN or Inf values", "nonfinite")


def check_extra_records(reply: Message, reference: dict[str, np.ndarray],
                        names: tuple[str, ...], codec: Codec | None = None
                        ) -> dict[str, dict[str, np.ndarray]]:
    """Decode and validate a strategy's extra reply records (e.g. SCAFFOLD's control
    update).

    Each named ArrayRecord must be present and, once decoded (a lossy ``codec``
    encodes it like the model's update, against zero:
    :class:`fedpers.client_pipeline.EncodeStep`), hold floating-point arrays
    whose names and shapes are those of ``reference`` parameters, with finite values.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    records = reply.content.array_records
    for name in names:
        if name not in records:
            raise RejectedReply(f"missing ArrayRecord {name!r}")
        try:
            arrays = record_to_numpy(records[name])
            if codec is not None and codec.lossy:  # an update against zero
                arrays = decode_update(codec, arrays,
                                       {k: np.zeros_like(v) for k, v in reference.items()})
        except CodecError as exc:
            raise RejectedReply(f"malformed encoded ArrayRecord {name!r}: {exc}",
                                "codec") from exc
        except Exception as exc:  # noqa: BLE001 - undeserialisable arrays
            raise RejectedReply(f"cannot read ArrayRecord {name!r}: "
                                f"{type(exc).__name__}: {exc}", "codec") from exc
        _check_arrays(arrays, reference, f"ArrayRecord {name!r}", same_dtype=False)
        out[name] = arrays
    return out


def update_norm(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """L2 norm of ``arrays - reference`` over the floating-point arrays (float64).

    The one update norm: reply screening (``max-update-norm``) and DP clipping
    (``fedpers.privacy.dpfedavg.clip_update``) both use it."""
    total = 0.0
    for key, arr in arrays.items():
        if arr.dtype.kind == "f":
            d = np.subtract(arr, reference[key], dtype=np.float64)  # no float64 copies
            total += float(np.dot(d.ravel(), d.ravel()))
    return float(np.sqrt(total))


def check_update_norm(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                      max_norm: float) -> float:
    """The update's L2 norm (:func:`update_norm`); rejected above ``max_norm`` (0 = off).

    Call after :func:`check_train_reply` (names, shapes and finiteness checked).
    """
    norm = update_norm(arrays, reference)
    if max_norm > 0 and not norm <= max_norm:
        raise RejectedReply(f"update norm {norm:.4g} exceeds max-update-norm {max_norm:g}",
                            "norm")
    return norm


def screen_train_reply(reply: Message, reference: dict[str, np.ndarray], codec: Codec,
                       extra_records: tuple[str, ...] = (), max_norm: float = 0.0,
                       partition_id: int = -1, required_metrics: tuple[str, ...] = (),
                       declared_examples: int = 0) -> CheckedReply:
    """Every check of one training reply, in order; :class:`RejectedReply` with a
    ``reason`` on the first that fails. What the round loop runs on each reply.

    ``required_metrics``: reply metrics the strategy cannot do without (FedNova's
    ``steps``), besides ``num-examples``.

    ``declared_examples``: the training-set size the client declared in its handshake
    (0: unknown). ``num-examples`` weights the mean and Krum's choice, so a client that
    claims more than it declared (e.g. 10^9 to dominate the average) is rejected; an
    honest client trains on at most its training set.
    """
    arrays, metrics = check_train_reply(reply, reference, codec, extra_records)
    n = metrics["num-examples"]
    if declared_examples > 0 and n > declared_examples:
        raise RejectedReply(f"num-examples {n:g} exceeds the {declared_examples} training "
                            f"examples this client declared at the handshake", "metrics")
    missing = [k for k in required_metrics if k not in metrics]
    if missing:
        raise RejectedReply(f"missing metric(s) {', '.join(map(repr, missing))}", "metrics")
    extra = check_extra_records(reply, reference, extra_records, codec)
    norm = check_update_norm(arrays, reference, max_norm)
    return CheckedReply(partition_id, arrays, metrics, extra, norm, reply)


def check_eval_reply(reply: Message) -> dict[str, Any]:
    return _metrics(reply)


def consistent_key_sets(checked: list[CheckedReply]) -> tuple[list[CheckedReply],
                                                               list[CheckedReply]]:
    """Keep replies whose parameter names match the most common set (FedAvg needs one)."""
    if not checked:
        return [], []
    counts = Counter(frozenset(c.arrays) for c in checked)
    keys = max(counts, key=lambda k: (counts[k], sorted(k)))
    keep = [c for c in checked if frozenset(c.arrays) == keys]
    drop = [c for c in checked if frozenset(c.arrays) != keys]
    return keep, drop


def clean_reply(reply: Message, checked: CheckedReply) -> Message:
    """The reply as the strategy should see it: decoded arrays + its metrics (+ extras)."""
    reply.content = RecordDict({"arrays": to_array_record(checked.arrays),
                                "metrics": MetricRecord(checked.metrics),
                                **{name: to_array_record(arrays)
                                   for name, arrays in checked.extra.items()}})
    return reply


def weighted_mean(pairs: Iterable[tuple[float, float]]) -> float | None:
    pairs = list(pairs)
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    return float(sum(v * w for v, w in pairs) / total)
