"""Virtual clients (issue 9, ``fedpers.virtual``): config rules, the client mod and the
server's grid, in-process (no Ray). The end-to-end equality with one SuperNode per
client is ``tests/test_virtual_e2e.py``."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)

from fedpers import client_state
from fedpers.comm import messages_bytes
from fedpers.config import ConfigError, clients_per_round, parse_run_config
from fedpers.server_app import virtual_grid
from fedpers.virtual import (
    RECORD,
    VIRTUAL_NODE_BASE,
    VirtualGrid,
    remove_states,
    state_dir,
    state_file,
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
        virtual_grid(cfg, GrpcGrid(), "run1")
    plain = GrpcGrid()
    assert virtual_grid(cfg.replace(**{"virtual-nodes": 0}), plain, "run1") is plain


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
