"""Virtual clients: a few simulated SuperNodes serve many clients in turn.

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

With ``clients-per-call = B`` > 1 the grid also packs up to B of a node's messages into
one message (:func:`pack`): a record that several clients' messages share (the
broadcast model) travels once, and the node serves the clients one after the other in
that one call and packs their replies into one reply, which the grid unpacks. Flower and
Ray then route, pickle and schedule one message per B clients (their per-message cost
in the driver is most of the Simulation Engine's overhead per client,
benchmarks/overhead/README.md). Byte accounting is unchanged: the server sizes each
client's own message before it is packed and each client's own reply after unpacking,
so the bytes are those of one SuperNode per client. A client that raises becomes an
error reply of its own; the others in the call are unaffected. But a client that hangs
holds up its whole call, and a call that times out loses all its clients' replies.

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

import copy
import dataclasses
import json
import logging
import shutil
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from fedpers import client_state
from fedpers.engine import CLIENT_APP_EXCEPTION, message_with_metadata, set_reply_origin
from fedpers.grid_view import GridView
from fedpers.registry import Params

logger = logging.getLogger(__name__)

RECORD = "virtual-client"  # the ConfigRecord that names the partition of this call
BATCH = "virtual-batch"  # the ConfigRecord of a call that serves several clients
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


# ------------------------------------------------------------------ packing
def pack(contents: Sequence[RecordDict | Error], extra: Mapping[str, Any] | None = None
         ) -> RecordDict:
    """Several messages' contents (or errors) as one RecordDict.

    Each distinct record object travels once (records several contents share, such as
    the broadcast model, are not repeated); the ConfigRecord ``virtual-batch`` lists,
    per message, its record names with the pooled record each one is, or its error, plus
    ``extra``. :func:`unpack` inverts it.
    """
    pool: dict[int, str] = {}
    records: dict[str, Any] = {}
    spec: dict[str, Any] = {"count": len(contents), **(extra or {})}
    for j, content in enumerate(contents):
        if isinstance(content, Error):
            spec[f"error-{j}"] = json.dumps([int(content.code), content.reason])
            continue
        pairs = []
        for key, record in content.items():
            ref = pool.get(id(record))
            if ref is None:
                ref = pool[id(record)] = f"r{len(records)}"
                records[ref] = record
            pairs.append([key, ref])
        spec[f"records-{j}"] = json.dumps(pairs)
    return RecordDict({**records, BATCH: ConfigRecord(spec)})


def unpack(content: RecordDict) -> list[RecordDict | Error]:
    """The contents (or errors) :func:`pack` packed, in order. A record that several of
    them share is copied for each, so no client sees another's changes to it."""
    spec = content.config_records[BATCH]
    out: list[Error | list[tuple[str, str]]] = []
    uses: dict[str, int] = {}
    for j in range(_number(spec["count"], "count")):
        if f"error-{j}" in spec:
            code, reason = json.loads(str(spec[f"error-{j}"]))
            out.append(Error(code=int(code), reason=str(reason)))
            continue
        pairs = [(str(key), str(ref)) for key, ref in json.loads(str(spec[f"records-{j}"]))]
        for _, ref in pairs:
            uses[ref] = uses.get(ref, 0) + 1
        out.append(pairs)
    return [item if isinstance(item, Error) else
            RecordDict({key: _own(content[ref]) if uses[ref] > 1 else content[ref]
                        for key, ref in item})
            for item in out]


def _number(value: object, what: str) -> int:
    """An integer field of a virtual-nodes record (a number in a ConfigRecord)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"virtual-nodes record: {what!r} is not a number: {value!r}")


def _own(record: Any) -> Any:
    """A copy of a record that can be changed without touching the original (an
    ``Array``'s data is immutable bytes, so the arrays themselves are shared)."""
    if isinstance(record, ArrayRecord):
        return ArrayRecord(dict(record.items()))
    return copy.deepcopy(record)


# ------------------------------------------------------------------ client
def virtual_client_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Serve the partition the server names in this message, with its saved state; or
    the several partitions of a packed call (``clients-per-call``), one after the other.

    A message without the ``virtual-client`` or ``virtual-batch`` record passes through
    unchanged (one SuperNode per client). The app and every inner mod see each message
    as the server built it and a Context as if this node always served that partition.
    """
    if not msg.has_content():
        return call_next(msg, context)
    records = msg.content.config_records
    if BATCH in records:
        return _serve_batch(msg, context, call_next)
    if RECORD not in records:
        return call_next(msg, context)
    spec = records[RECORD]
    msg.content = RecordDict({k: v for k, v in msg.content.items() if k != RECORD})
    return _serve(msg, context, call_next, _number(spec[PARTITION], PARTITION),
                  _number(spec[NUM_PARTITIONS], NUM_PARTITIONS), str(spec[STATE_KEY]))


def _serve(msg: Message, context: Context, call_next: Any, pid: int, num_partitions: int,
           state_key: str) -> Message:
    """One call of partition ``pid``: its state loaded before, written back after."""
    context.node_config[PARTITION] = pid
    context.node_config[NUM_PARTITIONS] = num_partitions
    root = client_state.state_root(context.node_config,
                                   str(context.run_config.get(client_state.STATE_DIR_KEY, "")))
    path = state_file(state_dir(root, state_key), pid)
    client_state.replace_state(context.state, load_state(path))
    try:
        reply = call_next(msg, context)
        if not reply.has_error():
            client_state.atomic_write(path, client_state.serialize(context.state),
                                     durable=False)
        return reply
    finally:
        client_state.replace_state(context.state, RecordDict())


def _serve_batch(msg: Message, context: Context, call_next: Any) -> Message:
    """A packed call: each client in turn; one reply packing theirs. A client that
    raises gets the error reply Flower would have made of it; the others go on."""
    spec = msg.content.config_records[BATCH]
    pids = json.loads(str(spec[PARTITION]))
    num_partitions, state_key = _number(spec[NUM_PARTITIONS], NUM_PARTITIONS), str(spec[STATE_KEY])
    results: list[RecordDict | Error] = []
    for pid, content in zip(pids, unpack(msg.content), strict=True):
        if isinstance(content, Error):  # the server packs contents only
            raise ValueError(f"virtual-nodes: a packed call holds an error for client {pid}")
        msg.content = content
        try:
            reply = _serve(msg, context, call_next, int(pid), num_partitions, state_key)
        except Exception as ex:  # noqa: BLE001 - one client's failure is its own reply
            logger.error("client %s failed in a packed call:\n%s", pid, traceback.format_exc())
            results.append(Error(code=CLIENT_APP_EXCEPTION,
                                 reason=f"{type(ex)}:<'{ex}'>"))
            continue
        results.append(reply.error if reply.has_error() else reply.content)
    return Message(pack(results), reply_to=msg)


def load_state(path: Path) -> RecordDict:
    """A partition's saved state; empty before its first call."""
    try:
        return client_state.deserialize(path.read_bytes())
    except FileNotFoundError:
        return RecordDict()


# ------------------------------------------------------------------ server
@dataclasses.dataclass(frozen=True)
class VirtualNodeParams(Params):
    """The run-config keys of virtual nodes (``fedpers keys``, group Simulation).

    Attributes
    ----------
    virtual_nodes : int
        ``virtual-nodes``: real SuperNodes that serve the clients (0 = one per client).
    clients_per_call : int
        ``clients-per-call``: clients packed into one message.
    packing : str
        ``packing``: auto (the simulation sets the two above when virtual-nodes is 0)
        or off.
    num_clients : int
        ``num-clients``: the clients (virtual nodes) the grid shows.
    """

    virtual_nodes: int
    clients_per_call: int
    packing: str
    num_clients: int


class VirtualGrid(GridView):
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
    clients_per_call
        ``clients-per-call``: pack up to this many of a node's messages into one.
    """

    def __init__(self, grid: Grid, num_partitions: int, state_key: str,
                 clients_per_call: int = 1) -> None:
        if clients_per_call < 1:
            raise ValueError(f"clients_per_call must be >= 1, got {clients_per_call}")
        super().__init__(grid)
        self.num_partitions = num_partitions
        self.state_key = state_key
        self.clients_per_call = clients_per_call

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
        order), packing up to ``clients_per_call`` of a node's messages of one type into
        one; return each client's reply with its virtual sender.

        A node given several messages of one call serves them one after the other or,
        with several Ray workers, at once: each call carries its own partitions and
        state files, so no two calls share a client's state (one client appears at most
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
        groups: dict[tuple[int, str, str], list[int]] = {}
        for i, msg in enumerate(messages):
            groups.setdefault((nodes[i % len(nodes)], msg.metadata.message_type,
                               msg.metadata.group_id), []).append(i)
        calls: list[tuple[Message, list[int]]] = []  # (what is sent, which messages)
        for (node, _, _), members in groups.items():
            for k in range(0, len(members), self.clients_per_call):
                chunk = members[k:k + self.clients_per_call]
                calls.append((self._routed([messages[i] for i in chunk],
                                           [pids[i] for i in chunk], node), chunk))
        calls.sort(key=lambda call: call[1][0])  # in message order
        replies = list(self._grid.send_and_receive([out for out, _ in calls],
                                                   timeout=timeout))
        # the grid gave each outgoing message its id when it pushed it
        members_of = {out.metadata.message_id: chunk for out, chunk in calls}
        received: list[Message] = []
        for reply in replies:
            chunk = members_of[reply.metadata.reply_to_message_id]
            parts = (unpack(reply.content) if reply.has_content() and len(chunk) > 1
                     else [None] * len(chunk))
            for j, (i, part) in enumerate(zip(chunk, parts, strict=True)):
                received.append(_as_reply(reply, part, messages[i].metadata.dst_node_id, j,
                                          len(chunk)))
        return received

    def _routed(self, msgs: list[Message], pids: list[int], node: int) -> Message:
        """One message for real node ``node`` carrying ``msgs`` (for partitions ``pids``):
        a copy of the message naming its partition, or several packed into one.
        (Strategies share one content among a round's messages: each gets its own.)"""
        meta = msgs[0].metadata
        if len(msgs) == 1:
            spec = ConfigRecord({PARTITION: pids[0], NUM_PARTITIONS: self.num_partitions,
                                 STATE_KEY: self.state_key})
            content = RecordDict({**dict(msgs[0].content.items()), RECORD: spec})
        else:
            content = pack([m.content for m in msgs],
                           {PARTITION: json.dumps(pids), NUM_PARTITIONS: self.num_partitions,
                            STATE_KEY: self.state_key})
        return Message(content, dst_node_id=node, message_type=meta.message_type,
                       ttl=meta.ttl, group_id=meta.group_id)


def _as_reply(reply: Message, part: RecordDict | Error | None, sender: int, j: int,
              count: int) -> Message:
    """Client ``sender``'s reply: ``reply`` itself (one client per call), or part ``j``
    of a packed reply (an error reply of the whole call is every client's error)."""
    if count == 1:
        out = reply
    else:
        meta = copy.copy(reply.metadata)
        set_reply_origin(meta, sender=sender, message_id=f"{reply.metadata.message_id}/{j}")
        if part is None:
            part = reply.error
        out = message_with_metadata(part, meta)
    set_reply_origin(out.metadata, sender=sender)  # the reply as its client sent it
    return out


def virtual_roster_entries(num_examples: Mapping[int, int]
                           ) -> tuple[dict[int, int], dict[int, int]]:
    """(virtual node id -> partition id, partition id -> num-examples): the roster
    a handshake would have built, from the data the server process loaded."""
    return ({virtual_node_id(p): p for p in num_examples},
            {p: int(n) for p, n in num_examples.items()})


__all__ = ["BATCH", "RECORD", "VirtualGrid", "load_state", "pack", "remove_states",
           "state_dir", "state_file", "unpack", "virtual_client_mod", "virtual_node_id",
           "virtual_roster_entries"]
