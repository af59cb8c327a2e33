"""Pieces of the server round loop: the node roster, the selected-grid view and
the reply checks. No MLflow here; ``fedpers.server_app`` ties them together."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedpers.codecs.base import Codec, CodecError

logger = logging.getLogger(__name__)


class SelectedGrid:
    """A view of a Grid that shows only the selected nodes.

    fedpers picks the clients of a round itself (seeded, by partition id) and hands
    any Flower strategy this view: the strategy "samples" all nodes it sees.
    """

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@dataclass
class Roster:
    """Which node serves which partition (client index), and its train-set size."""

    partition_of: dict[int, int] = field(default_factory=dict)  # node id -> partition id
    num_examples: dict[int, int] = field(default_factory=dict)  # partition id -> n train

    def node_of(self) -> dict[int, int]:
        return {p: n for n, p in self.partition_of.items()}

    def partitions(self) -> list[int]:
        return sorted(self.partition_of.values())


def wait_for_nodes(grid: Grid, wanted: int, timeout: float) -> list[int]:
    """Wait until ``wanted`` nodes are connected (or ``timeout`` s pass); return their ids."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= wanted or time.monotonic() >= deadline:
            return ids
        if len(ids) != last:
            logger.info("waiting for clients: %d of %d connected", len(ids), wanted)
            last = len(ids)
        time.sleep(0.5)


def refresh_roster(grid: Grid, roster: Roster, num_clients: int, timeout: float) -> list[int]:
    """Ask nodes not yet in the roster for their partition id. Returns new partition ids."""
    unknown = [n for n in grid.get_node_ids() if n not in roster.partition_of]
    if not unknown:
        return []
    msgs = [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n)
            for n in unknown]
    added = []
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            logger.warning("client on node %d failed the handshake: %s", node,
                           reply.error.reason)
            continue
        info = reply.content.metric_records.get("info")
        if info is None or "partition-id" not in info:
            logger.warning("node %d sent a handshake reply without partition-id", node)
            continue
        pid = int(info["partition-id"])
        if not 0 <= pid < num_clients or pid in roster.partition_of.values():
            logger.warning("node %d claims partition-id %d, which is out of range or taken; "
                           "ignoring it", node, pid)
            continue
        roster.partition_of[node] = pid
        roster.num_examples[pid] = int(info.get("num-examples", 0))
        added.append(pid)
    return sorted(added)


class RejectedReply(ValueError):
    """A reply that must not be aggregated; the message says why."""


@dataclass
class CheckedReply:
    partition_id: int
    arrays: dict[str, np.ndarray]  # decoded, validated
    metrics: dict[str, Any]


def _metrics(reply: Message) -> dict[str, Any]:
    records = reply.content.metric_records
    if len(records) != 1:
        raise RejectedReply(f"expected one MetricRecord, got {len(records)}")
    metrics = dict(next(iter(records.values())))
    n = metrics.get("num-examples")
    if not isinstance(n, (int, float)) or not np.isfinite(n) or n <= 0:
        raise RejectedReply(f"bad num-examples {n!r}")
    for k, v in metrics.items():
        vals = v if isinstance(v, list) else [v]
        if not all(np.isfinite(x) for x in vals):
            raise RejectedReply(f"metric {k!r} is not finite")
    return metrics


def check_train_reply(reply: Message, reference: dict[str, np.ndarray],
                      codec: Codec) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Decode and validate one training reply against the global ``reference`` arrays."""
    content = reply.content
    if len(content.array_records) != 1:
        raise RejectedReply(f"expected one ArrayRecord, got {len(content.array_records)}")
    metrics = _metrics(reply)
    record = next(iter(content.array_records.values()))
    try:
        payload = {k: a.numpy() for k, a in record.items()}
        arrays = codec.decode(payload, reference)
    except CodecError as exc:
        raise RejectedReply(f"malformed encoded update: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - undeserialisable arrays
        raise RejectedReply(f"cannot read arrays: {type(exc).__name__}: {exc}") from exc
    if not arrays:
        raise RejectedReply("empty update")
    for name, arr in arrays.items():
        ref = reference.get(name)
        if ref is None:
            raise RejectedReply(f"unknown parameter {name!r}")
        if arr.shape != ref.shape:
            raise RejectedReply(f"parameter {name!r} has shape {arr.shape}, "
                                f"expected {ref.shape}")
        if arr.dtype != ref.dtype:
            raise RejectedReply(f"parameter {name!r} has dtype {arr.dtype}, "
                                f"expected {ref.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise RejectedReply(f"parameter {name!r} has NaN or Inf values")
    return arrays, metrics


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


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def clean_reply(reply: Message, checked: CheckedReply) -> Message:
    """The reply as the strategy should see it: decoded arrays + its metrics."""
    reply.content = RecordDict({"arrays": to_array_record(checked.arrays),
                                "metrics": MetricRecord(checked.metrics)})
    return reply


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def weighted_mean(pairs: Iterable[tuple[float, float]]) -> float | None:
    pairs = list(pairs)
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    return float(sum(v * w for v, w in pairs) / total)
