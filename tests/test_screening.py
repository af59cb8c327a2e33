"""Reply checks: malformed updates are rejected with a reason, never averaged in."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict

from fedpers.codecs import CODECS
from fedpers.roster import SelectedGrid
from fedpers.screening import (
    CheckedReply,
    RejectedReply,
    check_train_reply,
    consistent_key_sets,
    weighted_mean,
)

REF = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app


def _reply(arrays: dict, metrics: dict | None = None, extra: dict | None = None) -> Message:
    ins = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=7)
    content = {"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
               "metrics": MetricRecord(metrics if metrics is not None
                                       else {"num-examples": 5, "train-loss": 0.1})}
    content.update(extra or {})
    return Message(RecordDict(content), reply_to=ins)


def test_valid_reply_passes():
    good = {"w": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)}
    arrays, metrics = check_train_reply(_reply(good), REF, CODECS["none"])
    assert set(arrays) == {"w", "b"} and metrics["num-examples"] == 5


@pytest.mark.parametrize("arrays, metrics, reason", [
    ({"w": np.ones((2, 3), np.float32)}, None, "shape"),
    ({"w": np.ones((3, 2), np.float64)}, None, "dtype"),
    ({"w": np.full((3, 2), np.nan, np.float32)}, None, "NaN or Inf"),
    ({"w": np.full((3, 2), np.inf, np.float32)}, None, "NaN or Inf"),
    ({"zzz": np.ones(2, np.float32)}, None, "unexpected array|unknown parameter"),
    ({"w": np.ones((3, 2), np.float32)}, {"num-examples": 0}, "num-examples"),
    ({"w": np.ones((3, 2), np.float32)}, {"num-examples": 3, "train-loss": float("nan")},
     "not finite"),
    ({"w": np.ones((3, 2), np.float32)}, {"train-loss": 1.0}, "num-examples"),
])
def test_malformed_reply_is_rejected_with_reason(arrays, metrics, reason):
    with pytest.raises(RejectedReply, match=reason):
        check_train_reply(_reply(arrays, metrics), REF, CODECS["none"])


def test_two_array_records_rejected():
    extra = {"more": ArrayRecord({"w": Array(np.ones((3, 2), np.float32))})}
    with pytest.raises(RejectedReply, match="one ArrayRecord"):
        check_train_reply(_reply({"w": np.ones((3, 2), np.float32)}, extra=extra), REF,
                          CODECS["none"])


def test_error_reply_has_no_content():
    ins = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=7)
    err = Message(Error(code=0, reason="boom"), reply_to=ins)
    assert err.has_error() and not err.has_content()


def test_inconsistent_key_sets_are_dropped():
    a = CheckedReply(0, {"w": REF["w"], "b": REF["b"]}, {})
    b = CheckedReply(1, {"w": REF["w"], "b": REF["b"]}, {})
    c = CheckedReply(2, {"w": REF["w"]}, {})
    keep, drop = consistent_key_sets([a, b, c])
    assert keep == [a, b] and drop == [c]


def test_selected_grid_shows_only_selected_nodes():
    class FakeGrid:
        def get_node_ids(self):
            return [1, 2, 3]

        def send_and_receive(self, msgs, timeout=None):
            return "sent"

    view = SelectedGrid(FakeGrid(), [3, 1])
    assert view.get_node_ids() == [3, 1]
    assert view.send_and_receive([]) == "sent"


def test_weighted_mean():
    assert weighted_mean([(1.0, 1), (3.0, 3)]) == pytest.approx(2.5)
    assert weighted_mean([]) is None


def test_to_array_record_keeps_zero_d_buffers():
    from fedpers.arrays import record_to_numpy, to_array_record

    arrays = {"num_batches_tracked": np.array(3, dtype=np.int64), "w": np.ones((2, 2))}
    back = record_to_numpy(to_array_record(arrays))
    assert back["num_batches_tracked"].shape == () and back["w"].shape == (2, 2)
