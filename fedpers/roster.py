"""Who the clients are: the roster of nodes and partitions, the handshake that fills
it, and the grid view that shows a strategy only the round's selected nodes."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedpers.grid_view import GridView

logger = logging.getLogger(__name__)


class SelectedGrid(GridView):
    """A view of a Grid that shows only the selected nodes.

    fedpers picks the clients of a round itself (seeded, by partition id) and hands
    any Flower strategy this view: the strategy "samples" all nodes it sees.
    """

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        super().__init__(grid)
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)


@dataclass
class Roster:
    """Which node serves which partition (client index), and its train-set size."""

    partition_of: dict[int, int] = field(default_factory=dict)  # node id -> partition id
    num_examples: dict[int, int] = field(default_factory=dict)  # partition id -> n train
    # partition id -> anything else the client put in its handshake reply (e.g. the
    # device profile a SuperNode reports from its node config, fedpers.devices)
    reported: dict[int, dict[str, float]] = field(default_factory=dict)

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
        raw_pid = info["partition-id"]
        if not isinstance(raw_pid, (int, float)):
            logger.warning("node %d sent a partition-id that is not a number", node)
            continue
        pid = int(raw_pid)
        if not 0 <= pid < num_clients or pid in roster.partition_of.values():
            logger.warning("node %d claims partition-id %d, which is out of range or taken; "
                           "ignoring it", node, pid)
            continue
        roster.partition_of[node] = pid
        examples = info.get("num-examples", 0)
        roster.num_examples[pid] = int(examples) if isinstance(examples, (int, float)) else 0
        roster.reported[pid] = {k: float(v) for k, v in info.items()
                                if k not in ("partition-id", "num-examples")
                                and isinstance(v, (int, float))}
        added.append(pid)
    return sorted(added)
