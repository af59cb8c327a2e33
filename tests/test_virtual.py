"""Virtual clients (issue 9, ``fedpers.virtual``): config rules, the client mod and the
server's grid, in-process (no Ray). The end-to-end equality with one SuperNode per
client is ``tests/test_virtual_e2e.py``."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from fedpers import client_state
from fedpers.byte_count import messages_bytes
from fedpers.config import ConfigError, clients_per_round, parse_run_config
from fedpers.server_app import virtual_grid
from fedpers.virtual import (
    BATCH,
    RECORD,
    VIRTUAL_NODE_BASE,
    VirtualGrid,
    VirtualNodeParams,
    pack,
    remove_states,
    state_dir,
    state_file,
    unpack,
    virtual_client_mod,
    virtual_node_id,
)

pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("raw, words", [
    ({"num-clients": 10, "virtual-nodes": 11}, ["'virtual-nodes' = 11", "'num-clients' = 10"]),
    ({"num-clients": 10, "virtual-nodes": 10, "checkpoint-every": 2},
     ["'virtual-nodes' = 10", "checkpoint-every = 0"]),
    ({"virtual-nodes": -1}, ["'virtual-nodes' = -1", ">= 0"]),
])
def test_impossible_virtual_nodes_are_refused_naming_the_key(raw, words):
    with pytest.raises(ConfigError) as exc:
        parse_run_config(raw)
    for word in words:
        assert word in str(exc.value)


def test_fewer_virtual_nodes_than_clients_per_round_are_accepted():
    # the grid deals a call's messages over the nodes (test_grid_deals_a_call_...)
    cfg = parse_run_config({"num-clients": 100, "fraction-train": 0.5,
                            "fraction-evaluate": 0.2, "virtual-nodes": 2})
    assert clients_per_round(cfg) == (50, 20)
    assert cfg.virtual_nodes == 2


def test_virtual_nodes_do_not_change_the_config_digest():
    cfg = parse_run_config({"num-clients": 10, "fraction-train": 0.5,
                            "fraction-evaluate": 0.5})
    assert cfg.replace(**{"virtual-nodes": 5}).digest() == cfg.digest()


def test_deployment_grid_is_refused():
    cfg = parse_run_config({"num-clients": 4, "fraction-train": 0.5,
                            "fraction-evaluate": 0.5, "virtual-nodes": 2})

    class GrpcGrid:  # any grid that is not the Simulation Engine's
        pass

    with pytest.raises(ConfigError, match="Simulation Engine only.*GrpcGrid"):
        virtual_grid(VirtualNodeParams.from_config(cfg), GrpcGrid(), "run1")
    plain = GrpcGrid()
    assert virtual_grid(VirtualNodeParams.from_config(cfg.replace(**{"virtual-nodes": 0})),
                        plain, "run1") is plain


# ------------------------------------------------------------------ client mod
def _context(tmp_path, node_id=7) -> Context:
    return Context(run_id=1, node_id=node_id, node_config={"partition-id": 0,
                                                           "num-partitions": 2},
                   state=RecordDict(), run_config={"client-state-dir": str(tmp_path)})


def _train_message(pid: int | None, key: str = "run1", dst: int = 7) -> Message:
    content = {"arrays": ArrayRecord({"w": Array(np.ones(3, np.float32))}),
               "config": ConfigRecord({"server-round": 1})}
    if pid is not None:
        content[RECORD] = ConfigRecord({"partition-id": pid, "num-partitions": 10,
                                        "state-key": key})
    msg = Message(RecordDict(content), dst_node_id=dst, message_type="train")
    msg.metadata.__dict__["_message_id"] = f"m{pid}"  # as a grid's push gives it
    return msg


def _counting_app(seen: list):
    """An inner app that records what it sees and counts its calls in the state."""

    def app(msg: Message, context: Context) -> Message:
        calls = context.state.config_records.get("calls", ConfigRecord({"n": 0}))
        seen.append({"records": sorted(msg.content.keys()),
                     "pid": context.node_config["partition-id"],
                     "num": context.node_config["num-partitions"],
                     "n_before": int(calls["n"]),
                     "trace": [float(x) for x in context.state.array_records["trace"]["v"]
                               .numpy()] if "trace" in context.state.array_records else []})
        context.state["calls"] = ConfigRecord({"n": int(calls["n"]) + 1})
        pid = int(context.node_config["partition-id"])
        context.state["trace"] = ArrayRecord({"v": Array(np.array(
            [pid, int(calls["n"]) + 1], np.float32))})
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)

    return app


def test_mod_serves_each_partition_with_its_own_state(tmp_path):
    seen: list = []
    app = _counting_app(seen)
    ctx = _context(tmp_path)
    for pid in (3, 5, 3, 3, 5):
        reply = virtual_client_mod(_train_message(pid), ctx, app)
        assert not reply.has_error()
        assert len(ctx.state) == 0  # the node's Context stays empty between calls
    # the app saw the message as the server built it and the partition's own history
    assert [s["records"] for s in seen] == [["arrays", "config"]] * 5
    assert [s["pid"] for s in seen] == [3, 5, 3, 3, 5]
    assert {s["num"] for s in seen} == {10}
    assert [s["n_before"] for s in seen] == [0, 0, 1, 2, 1]
    assert seen[3]["trace"] == [3.0, 2.0] and seen[4]["trace"] == [5.0, 1.0]
    folder = state_dir(tmp_path, "run1")
    saved = client_state.deserialize(state_file(folder, 3).read_bytes())
    assert int(saved.config_records["calls"]["n"]) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["partition-3.state",
                                                        "partition-5.state"]
    remove_states(tmp_path, "run1")
    assert not (tmp_path / "run1").exists()


def test_mod_passes_other_messages_through_untouched(tmp_path):
    seen: list = []
    ctx = _context(tmp_path)
    ctx.state["calls"] = ConfigRecord({"n": 4})
    virtual_client_mod(_train_message(None), ctx, _counting_app(seen))
    assert seen[0]["pid"] == 0 and seen[0]["n_before"] == 4
    assert int(ctx.state.config_records["calls"]["n"]) == 5  # kept in the Context
    assert not (tmp_path / "run1").exists()


def test_a_failed_call_keeps_the_saved_state(tmp_path):
    seen: list = []
    ctx = _context(tmp_path)
    virtual_client_mod(_train_message(2), ctx, _counting_app(seen))

    def broken(msg: Message, context: Context) -> Message:
        context.state["calls"] = ConfigRecord({"n": 99})
        raise RuntimeError("client crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        virtual_client_mod(_train_message(2), ctx, broken)
    assert len(ctx.state) == 0
    virtual_client_mod(_train_message(2), ctx, _counting_app(seen))
    assert seen[-1]["n_before"] == 1  # not 99: the crashed call's state was not saved


# ------------------------------------------------------------------ server grid
class FakeGrid:
    """Real nodes that answer each message with the partition their mod was told."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.sent: list[Message] = []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"id{i}"
            self.sent.append(msg)
            pid = int(msg.content.config_records[RECORD]["partition-id"])
            out.append(Message(RecordDict({"metrics": MetricRecord(
                {"num-examples": 1, "partition-id": pid})}), reply_to=msg))
        return list(reversed(out))  # replies arrive in any order


def _round(grid: VirtualGrid, pids: list[int]) -> list[Message]:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(4, np.float32))}),
                          "config": ConfigRecord({"server-round": 1})})
    # one shared content, as Flower's strategies build a round's messages
    return [Message(content, dst_node_id=virtual_node_id(p), message_type="train")
            for p in pids]


def test_grid_routes_each_call_to_distinct_real_nodes():
    inner = FakeGrid([30, 10, 20])
    grid = VirtualGrid(inner, num_partitions=100, state_key="run1")
    assert grid.get_node_ids() == [VIRTUAL_NODE_BASE + p for p in range(100)]
    messages = _round(grid, [42, 7])
    before = messages_bytes(messages)
    replies = grid.send_and_receive(messages, timeout=1.0)
    # the server's messages are left as they were (their bytes are what it counted)
    assert messages_bytes(messages) == before
    assert all(RECORD not in m.content.config_records for m in messages)
    assert [m.metadata.dst_node_id for m in inner.sent] == [10, 20]  # sorted real ids
    assert [dict(m.content.config_records[RECORD]) for m in inner.sent] == [
        {"partition-id": 42, "num-partitions": 100, "state-key": "run1"},
        {"partition-id": 7, "num-partitions": 100, "state-key": "run1"}]
    # every reply names its client as its sender, whichever node served it
    for reply in replies:
        pid = int(reply.content.metric_records["metrics"]["partition-id"])
        assert reply.metadata.src_node_id == virtual_node_id(pid)


def test_grid_deals_a_call_over_fewer_real_nodes_round_robin():
    inner = FakeGrid([20, 10])
    grid = VirtualGrid(inner, num_partitions=100, state_key="run1")
    pids = [5, 9, 1, 77, 3]
    replies = grid.send_and_receive(_round(grid, pids), timeout=1.0)
    assert [m.metadata.dst_node_id for m in inner.sent] == [10, 20, 10, 20, 10]
    assert [int(m.content.config_records[RECORD]["partition-id"]) for m in inner.sent] == pids
    # each reply is given back its own client as sender, although nodes served several
    assert sorted(r.metadata.src_node_id for r in replies) == sorted(
        virtual_node_id(p) for p in pids)
    for reply in replies:
        pid = int(reply.content.metric_records["metrics"]["partition-id"])
        assert reply.metadata.src_node_id == virtual_node_id(pid)


def test_grid_refuses_calls_it_cannot_serve():
    with pytest.raises(RuntimeError, match="no SuperNode connected"):
        VirtualGrid(FakeGrid([]), num_partitions=10, state_key="run1").send_and_receive(
            [Message(RecordDict(), dst_node_id=virtual_node_id(1), message_type="train")])
    grid = VirtualGrid(FakeGrid([1, 2]), num_partitions=10, state_key="run1")
    with pytest.raises(RuntimeError, match="one client twice"):
        grid.send_and_receive(_round(grid, [4, 4]))
    with pytest.raises(ValueError, match="not a virtual client"):
        grid.send_and_receive(_round(grid, [10]))


# ------------------------------------------------------------------ clients-per-call
def test_clients_per_call_needs_virtual_nodes_and_a_positive_count():
    with pytest.raises(ConfigError, match="'clients-per-call' = 4.*virtual-nodes > 0"):
        parse_run_config({"clients-per-call": 4})
    with pytest.raises(ConfigError, match="'clients-per-call'.*> 0"):
        parse_run_config({"num-clients": 10, "virtual-nodes": 2, "clients-per-call": 0})
    cfg = parse_run_config({"num-clients": 10, "fraction-train": 0.5,
                            "fraction-evaluate": 0.5, "virtual-nodes": 2})
    assert cfg.replace(**{"clients-per-call": 5}).digest() == cfg.digest()


def test_pack_sends_a_shared_record_once_and_unpack_gives_each_its_own_copy():
    shared = ArrayRecord({"w": Array(np.arange(1000, dtype=np.float32))})
    contents = [RecordDict({"arrays": shared, "config": ConfigRecord({"i": i})})
                for i in range(3)]
    packed = pack(contents + [Error(code=7, reason="broken")], {"extra": "x"})
    assert len(packed.array_records) == 1  # the model once, not three times
    assert packed.config_records[BATCH]["extra"] == "x"
    out = unpack(packed)
    assert isinstance(out[3], Error) and (out[3].code, out[3].reason) == (7, "broken")
    for i, content in enumerate(out[:3]):
        assert sorted(content.keys()) == ["arrays", "config"]
        assert content["config"]["i"] == i
        np.testing.assert_array_equal(content["arrays"]["w"].numpy(), np.arange(1000))
    # a client that changes its copy of the shared record changes nobody else's
    out[0]["arrays"]["w"] = Array(np.zeros(2, np.float32))
    assert out[1]["arrays"]["w"].shape == (1000,)
    assert shared["w"].shape == (1000,)


class LoopbackGrid:
    """Real nodes that run fedpers' client mod and an inner app on what they are sent
    (one Context per node, as the Simulation Engine keeps them), optionally replying
    to a whole call with an error."""

    def __init__(self, nodes, app, tmp_path, fail_calls=()):
        self.contexts = {n: _context(tmp_path, node_id=n) for n in nodes}
        self.app = app
        self.sent: list[Message] = []
        self.fail_calls = set(fail_calls)

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"id{len(self.sent)}"
            if len(self.sent) in self.fail_calls:
                out.append(Message(Error(code=3, reason="worker died"), reply_to=msg))
            else:
                ctx = self.contexts[msg.metadata.dst_node_id]
                # the worker gets its own copy (Ray pickles the message)
                copied = Message(content=RecordDict(dict(msg.content.items())),
                                 metadata=copy.copy(msg.metadata))
                out.append(virtual_client_mod(copied, ctx, self.app))
            out[-1].metadata.__dict__["_message_id"] = f"reply{len(self.sent)}"  # as Flower
            self.sent.append(msg)
        return list(reversed(out))


def _pid_app(seen: list, crash: int | None = None):
    """Replies with the partition and call count it served; raises for ``crash``."""
    counting = _counting_app(seen)

    def app(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == crash:
            context.state["calls"] = ConfigRecord({"n": 99})
            raise RuntimeError("client crashed")
        counting(msg, context)
        return Message(RecordDict({"metrics": MetricRecord(
            {"partition-id": int(context.node_config["partition-id"]),
             "n": int(context.state.config_records["calls"]["n"]),
             "w0": float(msg.content["arrays"]["w"].numpy()[0])})}), reply_to=msg)

    return app


def _by_sender(replies: list[Message]) -> dict[int, Message]:
    out = {r.metadata.src_node_id - VIRTUAL_NODE_BASE: r for r in replies}
    assert len(out) == len(replies)
    return out


def test_packed_calls_serve_each_client_with_its_own_state(tmp_path):
    seen: list = []
    inner = LoopbackGrid([20, 10], _pid_app(seen), tmp_path)
    grid = VirtualGrid(inner, num_partitions=100, state_key="run1", clients_per_call=3)
    pids = [5, 9, 1, 77, 3, 8, 2]
    for rnd in (1, 2):
        messages = _round(grid, pids)
        before = messages_bytes(messages)
        replies = _by_sender(grid.send_and_receive(messages, timeout=1.0))
        assert messages_bytes(messages) == before  # what the server counted, untouched
        assert sorted(replies) == sorted(pids)
        for pid, reply in replies.items():
            metrics = reply.content.metric_records["metrics"]
            assert int(metrics["partition-id"]) == pid and int(metrics["n"]) == rnd
            assert BATCH not in reply.content.config_records
    # node 10 had messages 0, 2, 4, 6 (two calls: 3 + 1), node 20 had 1, 3, 5 (one call)
    first = inner.sent[:3]
    assert [m.metadata.dst_node_id for m in first] == [10, 20, 10]
    assert [len(m.content.array_records) for m in first] == [1, 1, 1]  # model once a call
    assert [json.loads(m.content.config_records[BATCH]["partition-id"])
            if BATCH in m.content.config_records
            else int(m.content.config_records[RECORD]["partition-id"]) for m in first] == [
        [5, 1, 3], [9, 77, 8], 2]
    # the app saw each client's message as the server built it, with its own history
    assert [s["records"] for s in seen] == [["arrays", "config"]] * 14
    assert [s["pid"] for s in seen[:7]] == [5, 1, 3, 9, 77, 8, 2]
    assert [s["n_before"] for s in seen] == [0] * 7 + [1] * 7
    assert all(len(ctx.state) == 0 for ctx in inner.contexts.values())


def test_a_client_that_raises_in_a_packed_call_fails_alone(tmp_path):
    seen: list = []
    inner = LoopbackGrid([10], _pid_app(seen, crash=9), tmp_path)
    grid = VirtualGrid(inner, num_partitions=100, state_key="run1", clients_per_call=4)
    replies = _by_sender(grid.send_and_receive(_round(grid, [5, 9, 1]), timeout=1.0))
    assert len(inner.sent) == 1
    assert replies[9].has_error() and "client crashed" in replies[9].error.reason
    assert not replies[5].has_error() and not replies[1].has_error()
    assert not state_file(state_dir(tmp_path, "run1"), 9).exists()  # nothing saved


def test_an_error_reply_to_a_packed_call_is_every_clients_error(tmp_path):
    inner = LoopbackGrid([10, 20], _pid_app([]), tmp_path, fail_calls={0})
    grid = VirtualGrid(inner, num_partitions=100, state_key="run1", clients_per_call=2)
    replies = _by_sender(grid.send_and_receive(_round(grid, [5, 9, 1, 4]), timeout=1.0))
    assert [p for p, r in replies.items() if r.has_error()] == [5, 1]  # node 10's call
    assert all(r.error.reason == "worker died" for r in (replies[5], replies[1]))
    assert not replies[9].has_error() and not replies[4].has_error()
    assert len({r.metadata.message_id for r in replies.values()}) == 4
