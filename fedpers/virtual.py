"""Virtual clients: a few simulated SuperNodes serve many clients in turn (issue 9).

Flower's Simulation Engine polls every registered node and scans every stored
message under a lock (benchmarks/overhead/README.md, "Suspects" 1 and 6), so a run
with one SuperNode per client stops scaling at a few thousand clients. With
``virtual-nodes = K`` (simulation only) the engine starts K SuperNodes and:

- the server (:class:`VirtualGrid`) knows every client by a *virtual node id*
  (``VIRTUAL_NODE_BASE + partition id``), so the round loop, the roster, selection,
  the simulated clock, byte counting and reply checks all run exactly as with one
  node per client. Only when a call is sent does the grid hand the call's messages
  to the real nodes in turn (round-robin), each with a ConfigRecord
  ``virtual-client`` naming the partition it serves now (added after the server
  counted its bytes; the client removes it before the app sees the message), and give
  the replies back their virtual sender;
- the client (:func:`virtual_client_mod`, the outermost mod of the ClientApp) makes
  its node that partition for one call: ``partition-id`` in the node config, the
  partition's Context state loaded from disk; after the call it writes the state
  back (atomically) and empties the Context, which Flower ships to the Ray worker on
  every call.

A client's state therefore lives in ``<client-state-dir>/<run id>/virtual/
partition-<id>.state`` between calls (the serialisation of ``fedpers.client_state``,
i.e. Flower's own protobuf: bit-exact), and a run gives the results of the same run
with one SuperNode per client. The ServerApp deletes the folder when the run ends
(in simulation the server and the clients share one machine).

Limits: simulation only; no checkpoint and resume (``fedpers.config`` refuses both
combinations); a call whose reply times out leaves that client's node busy, and if
the same client is picked again before the late reply is written the two calls race
on its state file (with ``round-timeout`` far above a client's time this does not
happen).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from fedpers import client_state

logger = logging.getLogger(__name__)

RECORD = "virtual-client"  # the ConfigRecord that names the partition of this call
PARTITION, NUM_PARTITIONS, STATE_KEY = "partition-id", "num-partitions", "state-key"
VIRTUAL_NODE_BASE = 1 << 40  # virtual node id = base + partition id
FOLDER = "virtual"


def virtual_node_id(partition_id: int) -> int:
    return VIRTUAL_NODE_BASE + int(partition_id)


def state_dir(root: Path, key: str) -> Path:
    """``root/<key>/virtual``: the run's virtual client states (key: the MLflow run id,
    checked like a checkpoint's state key)."""
    return client_state.state_folder(root, key, 0).parent / FOLDER


def state_file(folder: Path, partition_id: int) -> Path:
    return folder / f"partition-{int(partition_id)}{client_state.SUFFIX}"


def remove_states(root: Path, key: str) -> None:
    """Delete a run's virtual client states (and the run's folder if nothing else is
    left in it)."""
    folder = state_dir(root, key)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:  # checkpointed state there too, or already gone
        pass


# ------------------------------------------------------------------ client
def virtual_client_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Serve the partition the server names in this message, with its saved state.

    A message without the ``virtual-client`` record passes through unchanged (one
    SuperNode per client). The app and every inner mod see the message as the server
    built it and a Context as if this node always served that partition.
    """
    if not msg.has_content() or RECORD not in msg.content.config_records:
        return call_next(msg, context)
    spec = msg.content.config_records[RECORD]
    msg.content = RecordDict({k: v for k, v in msg.content.items() if k != RECORD})
    pid = int(spec[PARTITION])
    context.node_config[PARTITION] = pid
    context.node_config[NUM_PARTITIONS] = int(spec[NUM_PARTITIONS])
    root = client_state.state_root(context.node_config,
                                   str(context.run_config.get(client_state.STATE_DIR_KEY, "")))
    path = state_file(state_dir(root, str(spec[STATE_KEY])), pid)
    client_state.replace_state(context.state, load_state(path))
    try:
        reply = call_next(msg, context)
        if not reply.has_error():
            client_state.atomic_write(path, client_state.serialize(context.state),
                                     durable=False)
        return reply
    finally:
        client_state.replace_state(context.state, RecordDict())


def load_state(path: Path) -> RecordDict:
    """A partition's saved state; empty before its first call."""
    try:
        return client_state.deserialize(path.read_bytes())
    except FileNotFoundError:
        return RecordDict()


# ------------------------------------------------------------------ server
class VirtualGrid:
    """A Grid whose nodes are the clients (virtual node ids); each call's messages are
    dealt over the real SuperNodes.

    Parameters
    ----------
    grid
        The Simulation Engine's grid with the ``virtual-nodes`` real SuperNodes.
    num_partitions
        ``num-clients``: partitions 0 .. num_partitions - 1 are the virtual nodes.
    state_key
        The MLflow run id; clients keep their state under it.
    """

    def __init__(self, grid: Grid, num_partitions: int, state_key: str) -> None:
        self._grid = grid
        self.num_partitions = num_partitions
        self.state_key = state_key

    @property
    def inner(self) -> Grid:
        """The Simulation Engine's grid (the real SuperNodes)."""
        return self._grid

    def get_node_ids(self) -> list[int]:
        return [virtual_node_id(p) for p in range(self.num_partitions)]

    def real_node_ids(self) -> list[int]:
        return sorted(self._grid.get_node_ids())

    def partition_of(self, node_id: int) -> int:
        pid = node_id - VIRTUAL_NODE_BASE
        if not 0 <= pid < self.num_partitions:
            raise ValueError(f"node id {node_id} is not a virtual client of this run")
        return pid

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        """Deal the messages over the real nodes (sorted node ids, round-robin in message
        order); return the replies with their virtual senders.

        A node given several messages of one call serves them one after the other or,
        with several Ray workers, at once: each call carries its own partition and
        state file, so no two calls share a client's state (one client appears at most
        once per call).
        """
        messages = list(messages)
        nodes = self.real_node_ids()
        if not nodes:
            raise RuntimeError("no SuperNode connected (run-config key 'virtual-nodes')")
        pids = [self.partition_of(m.metadata.dst_node_id) for m in messages]
        if len(set(pids)) != len(pids):
            raise RuntimeError("one client twice in one call: its state cannot be served "
                               "by two calls at once")
        outgoing = [self._routed(msg, pid, nodes[i % len(nodes)])
                    for i, (msg, pid) in enumerate(zip(messages, pids, strict=True))]
        replies = list(self._grid.send_and_receive(outgoing, timeout=timeout))
        # the grid gave each outgoing message its id when it pushed it
        sender = {out.metadata.message_id: msg.metadata.dst_node_id
                  for out, msg in zip(outgoing, messages, strict=True)}
        for reply in replies:
            # the reply as its client sent it: Flower's own way of setting metadata
            # (Metadata has no setter for the sender)
            reply.metadata.__dict__["_src_node_id"] = sender[reply.metadata.reply_to_message_id]
        return replies

    def _routed(self, msg: Message, pid: int, node: int) -> Message:
        """A copy of ``msg`` for real node ``node``, naming the partition it serves.
        (Strategies share one content among a round's messages: each gets its own.)"""
        spec = ConfigRecord({PARTITION: pid, NUM_PARTITIONS: self.num_partitions,
                             STATE_KEY: self.state_key})
        content = RecordDict({**dict(msg.content.items()), RECORD: spec})
        meta = msg.metadata
        return Message(content, dst_node_id=node, message_type=meta.message_type,
                       ttl=meta.ttl, group_id=meta.group_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def virtual_roster_entries(num_examples: Mapping[int, int]
                           ) -> tuple[dict[int, int], dict[int, int]]:
    """(virtual node id -> partition id, partition id -> num-examples): the roster
    a handshake would have built, from the data the server process loaded."""
    return ({virtual_node_id(p): p for p in num_examples},
            {p: int(n) for p, n in num_examples.items()})


__all__ = ["RECORD", "VirtualGrid", "load_state", "remove_states", "state_dir",
           "state_file", "virtual_client_mod", "virtual_node_id", "virtual_roster_entries"]
