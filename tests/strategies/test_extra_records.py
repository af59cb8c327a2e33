"""A strategy's extra reply records: checked like the model, passed on, counted in bytes."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from fedpers.byte_count import content_bytes
from fedpers.codecs import CODECS, build_codec
from fedpers.screening import (
    CheckedReply,
    RejectedReply,
    check_extra_records,
    check_train_reply,
    clean_reply,
)
from strategies import STRATEGIES

pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app

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


# ------------------------------------------------- through the upload codec (issue 6)
BIG = {"w": np.zeros((40, 50), np.float32), "b": np.zeros(50, np.float32)}


def _cfg(codec: str, ef: bool):
    from fedpers.config import parse_run_config

    return parse_run_config({"task": "digits", "codec": codec, "error-feedback": ef})


#: the model's shared part that goes with the control record (other names than BIG's)
MODEL = {"m": np.linspace(-1, 1, 64, dtype=np.float32)}


def _encode_control(cfg, control: dict, state: RecordDict, server_round: int = 1
                    ) -> ArrayRecord:
    """The client's EncodeStep on a reply with extra record ``control``: its record."""
    from fedpers.arrays import to_array_record
    from fedpers.client_pipeline import EncodeStep, RoundInputs, Upload, codec_for

    step = EncodeStep(codec_for(cfg), cfg.error_feedback, cfg.seed)
    shared = {k: v + 0.1 for k, v in MODEL.items()}
    up = step.apply(Upload(shared, {"control": control}),
                    RoundInputs(server_round, 0, MODEL, state))
    return to_array_record(up.extra["control"])


def _encoded_reply(record: ArrayRecord) -> Message:
    ins = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=7)
    return Message(RecordDict({"control": record}), reply_to=ins)


def test_a_lossy_codec_compresses_the_extra_record_and_the_server_decodes_it():
    rng = np.random.default_rng(1)
    control = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in BIG.items()}
    plain = content_bytes(RecordDict({"control": ArrayRecord(
        {k: Array(v) for k, v in control.items()})}))
    for codec, tol, max_share in (("fp16", 1e-3, 0.55), ("q8", 0.05, 0.3)):
        record = _encode_control(_cfg(codec, False), control, RecordDict())
        sent = content_bytes(RecordDict({"control": record}))
        assert sent < max_share * plain, codec
        decoded = check_extra_records(_encoded_reply(record), BIG, ("control",),
                                      build_codec(_cfg(codec, False)))["control"]
        for k in control:
            assert decoded[k].dtype == np.float32
            np.testing.assert_allclose(decoded[k], control[k], atol=tol * 4, rtol=tol)
    # lossless: the arrays as they are
    record = _encode_control(_cfg("none", False), control, RecordDict())
    np.testing.assert_array_equal(record["w"].numpy(), control["w"])


def test_error_feedback_on_the_extra_record_loses_nothing_over_rounds():
    """sum of what the server decoded + the residual left = sum of the records."""
    from fedpers.client_pipeline import EF_STATE_KEY, ErrorFeedback

    cfg, state = _cfg("topk", True), RecordDict()
    rng = np.random.default_rng(2)
    total_in = {k: np.zeros_like(v, dtype=np.float64) for k, v in BIG.items()}
    total_out = {k: np.zeros_like(v, dtype=np.float64) for k, v in BIG.items()}
    for rnd in range(5):
        control = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in BIG.items()}
        record = _encode_control(cfg, control, state, server_round=rnd + 1)
        decoded = check_extra_records(_encoded_reply(record), BIG, ("control",),
                                      build_codec(cfg))["control"]
        for k in BIG:
            total_in[k] += control[k]
            total_out[k] += decoded[k]
            assert np.count_nonzero(decoded[k]) <= max(1, int(np.ceil(0.01 * BIG[k].size)))
    residual = ErrorFeedback(state).get(f"{EF_STATE_KEY}/control")
    assert set(residual) == set(BIG)
    assert set(ErrorFeedback(state).get()) == set(MODEL)  # the model's residual is its own
    for k in BIG:
        np.testing.assert_allclose(total_out[k] + residual[k], total_in[k], atol=1e-4)


def test_a_corrupted_encoded_extra_record_is_rejected_as_codec():
    control = {k: np.ones_like(v) for k, v in BIG.items()}
    record = _encode_control(_cfg("q8", False), control, RecordDict())
    arrays = {k: a.numpy() for k, a in record.items()}
    key = next(k for k, v in arrays.items() if v.dtype == np.uint8)
    arrays[key] = arrays[key][:-7]  # truncated
    bad = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    with pytest.raises(RejectedReply, match="malformed encoded ArrayRecord 'control'") as err:
        check_extra_records(_encoded_reply(bad), BIG, ("control",), build_codec(_cfg("q8", False)))
    assert err.value.reason == "codec"
