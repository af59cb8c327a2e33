"""A strategy's extra reply records: checked like the model, passed on, counted in bytes."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from strategy_helpers import task_identity  # noqa: F401 - autouse fixture

from fedpers.codecs import CODECS
from fedpers.comm import content_bytes
from fedpers.rounds import (
    CheckedReply,
    RejectedReply,
    check_extra_records,
    check_train_reply,
    clean_reply,
)
from strategies import STRATEGIES

REF = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
GOOD = {"w": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)}


def _reply(control: dict | None) -> Message:
    ins = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=7)
    content = {"arrays": ArrayRecord({k: Array(v) for k, v in GOOD.items()}),
               "metrics": MetricRecord({"num-examples": 5, "train-loss": 0.1})}
    if control is not None:
        content["control"] = ArrayRecord({k: Array(v) for k, v in control.items()})
    return Message(RecordDict(content), reply_to=ins)


def test_scaffold_declares_its_control_record():
    assert STRATEGIES["scaffold"].extra_records == ("control",)
    assert all(spec.extra_records == () for name, spec in STRATEGIES.items()
               if name != "scaffold")


def test_declared_extra_record_passes_and_reaches_the_strategy():
    msg = _reply({"w": np.full((3, 2), 0.5, np.float32)})
    arrays, metrics = check_train_reply(msg, REF, CODECS["none"], ("control",))
    extra = check_extra_records(msg, REF, ("control",))
    assert set(arrays) == {"w", "b"} and set(extra) == {"control"}
    cleaned = clean_reply(msg, CheckedReply(0, arrays, metrics, extra))
    assert set(cleaned.content.array_records) == {"arrays", "control"}
    np.testing.assert_array_equal(cleaned.content["control"]["w"].numpy(), 0.5)


def test_an_undeclared_extra_record_is_still_rejected():
    with pytest.raises(RejectedReply, match="one ArrayRecord"):
        check_train_reply(_reply({"w": REF["w"]}), REF, CODECS["none"])


@pytest.mark.parametrize("control, reason", [
    (None, "missing ArrayRecord 'control'"),
    ({"zzz": np.ones(2, np.float32)}, "unknown parameter 'zzz'"),
    ({"w": np.ones((2, 3), np.float32)}, "shape"),
    ({"w": np.ones((3, 2), np.int32)}, "floating point"),
    ({"w": np.full((3, 2), np.nan, np.float32)}, "NaN or Inf"),
    ({"b": np.array([1.0, np.inf], np.float32)}, "NaN or Inf"),
])
def test_malformed_extra_record_is_rejected(control, reason):
    with pytest.raises(RejectedReply, match=reason):
        check_extra_records(_reply(control), REF, ("control",))


def test_the_extra_record_is_counted_in_the_bytes():
    plain = content_bytes(_reply(None).content)
    rng = np.random.default_rng(0)
    control = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in REF.items()}
    with_control = content_bytes(_reply(control).content)
    assert with_control - plain >= sum(v.nbytes for v in control.values())
