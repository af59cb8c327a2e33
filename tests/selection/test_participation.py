"""The round loop's side of the clock (fedpers.participation) on hand-made messages,
and the client's side of partial work (``max-steps``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from clients import LOCAL_UPDATES, LocalContext
from fedpers.byte_count import content_bytes
from fedpers.config import parse_run_config
from fedpers.data.base import ClientData
from fedpers.devices import MAX_STEPS, DeviceProfile, samples_processed
from fedpers.participation import Participation
from fedpers.roster import Roster

N = {0: 64, 1: 64, 2: 10}  # training-set sizes


pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app


def roster() -> Roster:
    r = Roster()
    for p, n in N.items():
        r.partition_of[100 + p] = p
        r.num_examples[p] = n
    return r


def participation(partial_work: bool = False, deadline: float = 3.0, **keys) -> Participation:
    cfg = parse_run_config({"num-clients": 3, "device-profile": "lognormal", "batch-size": 8,
                            "round-deadline": deadline, **keys})
    part = Participation(cfg, roster(), fallback_bytes=1000, partial_work=partial_work)
    # hand-made devices: 0 fast, 1 slow compute, 2 slow uplink
    part.clock.profiles.update({0: DeviceProfile(100.0, 1e6, 1e6),
                                1: DeviceProfile(10.0, 1e6, 1e6),
                                2: DeviceProfile(100.0, 100.0, 1e6)})
    return part


def broadcast(parts: list[int]) -> list[Message]:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(50, np.float32))}),
                          "config": ConfigRecord({"server-round": 1})})
    return [Message(content, message_type=MessageType.TRAIN, dst_node_id=100 + p)
            for p in parts]


def reply(msg: Message, steps: int) -> Message:
    return Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(50, np.float32))}),
                               "metrics": MetricRecord({"num-examples": 1, "steps": steps,
                                                        "train-loss": 0.5})}),
                   reply_to=msg)


def test_replies_are_timed_with_their_exact_bytes_and_the_late_dropped():
    part = participation()
    assert part.candidates(1, [0, 1, 2]) == [0, 1, 2]  # availability 1: all online
    msgs = broadcast([0, 1, 2])
    sent, gone = part.start(1, msgs)
    assert sent == msgs and gone == []  # no dropout, no partial work: untouched
    replies = [reply(m, steps=8) for m in sent]  # one epoch of 64 samples (10 for client 2)
    down, up = content_bytes(msgs[0].content), content_bytes(replies[0].content)
    late = part.finish(1, replies)
    expect = {0: 64 / 100 + down / 1e6 + up / 1e6,
              1: 64 / 10 + down / 1e6 + up / 1e6,
              2: samples_processed(8, 10, 8) / 100 + down / 1e6 + up / 100}
    for p, t in expect.items():
        assert part.stats[p].last_duration_s == pytest.approx(t)
    assert expect[0] < 3.0 < min(expect[1], expect[2])
    assert late == {1, 2}
    assert part.metrics() == {"time/round_s": 3.0, "time/total_s": 3.0, "clients/dropped": 2.0}
    # next round without a deadline problem: the total accumulates
    sent, _ = part.start(2, broadcast([0]))
    assert part.finish(2, [reply(sent[0], steps=8)]) == set()
    assert part.metrics()["time/round_s"] == pytest.approx(expect[0])
    assert part.metrics()["time/total_s"] == pytest.approx(3.0 + expect[0])


def test_predictions_for_the_selectors():
    part = participation(**{"local-epochs": 2})
    part.candidates(1, [0, 1, 2])
    # full work (2 epochs) at its speed, fallback bytes both ways before any measurement
    assert part.stats[1].expected_s == pytest.approx(2 * 64 / 10 + 1000 / 1e6 + 1000 / 1e6)
    assert part.stats[1].num_examples == 64


def test_partial_work_gives_each_client_the_steps_that_fit():
    part = participation(partial_work=True, deadline=3.0)
    part.candidates(1, [0, 1])
    msgs = broadcast([0, 1])
    sent, _ = part.start(1, msgs)
    budgets = [int(m.content["config"][MAX_STEPS]) for m in sent]
    # 3 s minus the download and the estimated upload (fallback bytes + 10%), in steps of 8
    down = content_bytes(msgs[0].content)
    left = 3.0 - down / 1e6 - 1.1 * 1000 / 1e6
    assert budgets == [int(left * 100 // 8), int(left * 10 // 8)] == [37, 3]
    assert sent[0].content is not sent[1].content  # each its own config
    assert dict(msgs[0].content["config"])["server-round"] == 1
    assert sent[0].content["arrays"] is sent[1].content["arrays"]
    late = part.finish(1, [reply(m, steps=b) for m, b in zip(sent, budgets, strict=True)])
    assert late == set() and part.timing.duration_s <= 3.0


def test_mid_round_dropouts_are_not_sent_and_are_counted():
    part = participation()
    part.clock.profiles[1] = DeviceProfile(10.0, 1e6, 1e6, dropout=0.999)
    sent, gone = part.start(1, broadcast([0, 1]))
    assert [m.metadata.dst_node_id for m in sent] == [100]
    assert [m.metadata.dst_node_id for m in gone] == [101]
    part.finish(1, [reply(sent[0], steps=8)])
    assert part.metrics()["clients/dropped"] == 1.0


def test_without_a_device_profile_nothing_changes_but_the_selection_counts():
    cfg = parse_run_config({"num-clients": 3})
    part = Participation(cfg, roster(), fallback_bytes=1000, partial_work=True)
    assert part.clock is None and part.candidates(1, [0, 1, 2]) == [0, 1, 2]
    msgs = broadcast([0, 1, 2])
    assert part.start(1, msgs) == (msgs, [])
    assert part.finish(1, [reply(m, 8) for m in msgs]) == set() and part.metrics() == {}
    assert part.note_selected(1, [0, 1]) == pytest.approx(4 / 6)
    part.note_trained([(0, {"train-loss": 0.7}), (1, {"train-loss": float("nan")})])
    assert part.stats.seen(0) and not part.stats.seen(1)


@pytest.mark.parametrize("rule", ["sgd", "proximal", "scaffold"])
def test_every_local_update_rule_honours_the_servers_step_budget(rule):
    x = np.ones((8, 1), np.float32)
    y = np.zeros(8, np.int64)
    steps = {}
    for budget in (None, 3):
        server_config = {"proximal-mu": 0.1} | ({} if budget is None else {MAX_STEPS: budget})
        local = LocalContext.from_config(
            parse_run_config({"local-epochs": 2, "batch-size": 2, "lr": 0.01}),
            data=ClientData(x_train=x, y_train=y, x_test=x[:1], y_test=y[:1]),
            kind="anomaly", server_round=1, partition_id=0, seed=0,
            device=torch.device("cpu"), state=RecordDict(), server_config=server_config,
            server_arrays={"control": {"weight": np.zeros((1, 1), np.float32)}})
        model = torch.nn.Linear(1, 1, bias=False)
        steps[budget] = LOCAL_UPDATES[rule].train(model, local).steps
    assert steps == {None: 8, 3: 3}
