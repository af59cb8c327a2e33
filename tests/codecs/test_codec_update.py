"""Updates, not weights: delta coding, error feedback, and the Flower glue around codecs."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fedpers.arrays import to_array_record
from fedpers.byte_count import content_bytes
from fedpers.client_pipeline import (
    DISTORTION_METRIC,
    EF_STATE_KEY,
    EncodeStep,
    RoundInputs,
    Upload,
    build_client_pipeline,
    decode_broadcast,
    run_pipeline,
)
from fedpers.codecs import CODECS, CodecError, build_codec
from fedpers.codecs.update import (
    PACKED_KEY,
    decode_update,
    decode_weights,
    encode_update,
    encode_weights,
    pack,
    packed_nbytes,
    unpack,
)
from fedpers.compression import UploadStats, encode_broadcast
from fedpers.config import ConfigError, parse_run_config
from fedpers.screening import RejectedReply, check_train_reply

LOSSY = [k for k, c in CODECS.items() if c.lossy]


pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app


def model(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": (scale * rng.normal(size=(40, 30))).astype(np.float32),
            "b": (scale * rng.normal(size=30)).astype(np.float32),
            "steps": np.array(seed, np.int64)}  # an integer buffer


def test_none_sends_the_weights_themselves():
    local = model(1)
    up = encode_update(CODECS["none"], local, model(0), np.random.default_rng(0))
    assert all(up.payload[k] is local[k] for k in local)
    assert up.residual is None and up.distortion is None


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_codecs_send_the_update_and_the_server_adds_it(name):
    codec = CODECS[name]
    glob = model(0)
    local = {k: (v + 0.01 * model(1)[k] if v.dtype.kind == "f" else np.array(5, np.int64))
             for k, v in glob.items()}
    up = encode_update(codec, local, glob, np.random.default_rng(0))
    assert up.payload["steps"] is local["steps"]  # integer buffers pass through
    assert list(up.payload) == [PACKED_KEY, "steps"]  # the floats: one packed uint8 array
    assert up.payload[PACKED_KEY].dtype == np.uint8
    if name != "topk":  # top-k's exact size depends on its index gaps
        assert up.payload[PACKED_KEY].nbytes == packed_nbytes(
            codec, {k: glob[k].shape for k in ("w", "b")})
    weights = decode_update(codec, up.payload, glob)
    assert list(weights) == list(local)
    assert weights["steps"] == 5
    for k in ("w", "b"):
        assert weights[k].dtype == np.float32
        delta = local[k] - glob[k]
        err = float(np.linalg.norm(weights[k] - local[k]))
        # the error is the codec's on the (small) update, not on the (large) weights
        assert err <= codec.error_bound(delta) * (1 + 1e-4) + 1e-6, (k, err)
    decoded = {k: weights[k] - glob[k] for k in ("w", "b")}
    d = np.concatenate([(local[k] - glob[k]).ravel() for k in ("w", "b")])
    e = np.concatenate([(local[k] - glob[k] - decoded[k]).ravel() for k in ("w", "b")])
    assert up.distortion == pytest.approx(np.linalg.norm(e) / np.linalg.norm(d), rel=1e-3,
                                          abs=1e-6)


def test_distortion_of_a_zero_update_is_zero():
    glob = model(0)
    up = encode_update(CODECS["q4"], glob, glob, np.random.default_rng(0))
    assert up.distortion == 0.0


@pytest.mark.parametrize("name", LOSSY)
def test_error_feedback_loses_nothing(name):
    """sum of decoded uploads + final residual == sum of the updates, every codec."""
    codec = CODECS[name]
    rng = np.random.default_rng(0)
    glob = model(0)
    residual = None
    sent_sum = {k: np.zeros_like(glob[k], np.float64) for k in ("w", "b")}
    update_sum = {k: np.zeros_like(glob[k], np.float64) for k in ("w", "b")}
    for t in range(8):
        u = model(100 + t, scale=0.01)
        local = {k: (glob[k] + u[k] if k != "steps" else glob[k]) for k in glob}
        up = encode_update(codec, local, glob, rng, residual, error_feedback=True)
        received = decode_update(codec, up.payload, glob)
        for k in ("w", "b"):
            sent_sum[k] += received[k].astype(np.float64) - glob[k]
            update_sum[k] += local[k].astype(np.float64) - glob[k]
        residual = up.residual
        assert set(residual) == {"w", "b"}
    for k in ("w", "b"):
        np.testing.assert_allclose(sent_sum[k] + residual[k], update_sum[k], atol=2e-5)
    # without error feedback a biased codec does lose mass (the check above is not vacuous)
    if name in ("topk", "randk", "sign"):
        assert np.abs(sent_sum["w"] - update_sum["w"]).max() > 1e-3


def test_error_feedback_lets_topk_follow_a_steady_update():
    """Without memory top-k keeps sending the same 10% and loses the rest for good."""
    from fedpers.codecs.topk import TopKCodec

    codec = TopKCodec(fraction=0.1)
    glob = model(0)
    drift = model(1, scale=0.01)["w"]
    errors = {}
    for ef in (False, True):
        rng = np.random.default_rng(0)
        residual, sent, total = None, 0.0, 0.0
        for t in range(40):
            u = drift + model(200 + t, scale=0.001)["w"]
            up = encode_update(codec, {"w": glob["w"] + u}, glob, rng, residual,
                               error_feedback=ef)
            sent = sent + decode_update(codec, up.payload, glob)["w"] - glob["w"]
            total = total + u
            residual = up.residual
        errors[ef] = float(np.linalg.norm(sent - total) / np.linalg.norm(total))
    assert errors[False] > 0.5 and errors[True] < 0.2 * errors[False], errors


def test_a_residual_of_another_shape_is_ignored():
    glob = model(0)
    stale = {"w": np.ones((3, 3), np.float32)}
    up = encode_update(CODECS["q8"], model(1), glob, np.random.default_rng(0), stale,
                       error_feedback=True)
    assert up.residual["w"].shape == glob["w"].shape


def test_a_missing_reference_for_a_shared_parameter_fails_on_the_client():
    with pytest.raises(ValueError, match="was not in the model the server sent"):
        encode_update(CODECS["q8"], {"new": np.ones(3, np.float32)}, {},
                      np.random.default_rng(0))


# ------------------------------------------------------------------ Flower glue
def _cfg(**kw):
    return parse_run_config({"task": "digits", **kw}, check_names=False)


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def encode_reply(cfg, shared, received, state, server_round=1):
    """The client's upload pipeline (here only its EncodeStep) on ``shared``, with
    ``received`` as the broadcast it decoded: the reply's ArrayRecord and metrics."""
    steps = build_client_pipeline(cfg, 0)
    assert [type(s) for s in steps] == [EncodeStep]
    up = run_pipeline(steps, Upload(shared), RoundInputs(server_round, 0, received, state))
    return to_array_record(up.shared), up.metrics


def test_client_keeps_the_residual_in_its_context_state():
    cfg = _cfg(codec="sign", **{"error-feedback": True})
    state = RecordDict()
    glob = model(0)
    total = {k: np.zeros_like(glob[k], np.float64) for k in ("w", "b")}
    sent = {k: np.zeros_like(glob[k], np.float64) for k in ("w", "b")}
    for t in range(3):
        u = model(10 + t, scale=0.01)
        local = {k: glob[k] + u[k] if k != "steps" else glob[k] for k in glob}
        rec, metrics = encode_reply(cfg, local, glob, state, server_round=t + 1)
        assert EF_STATE_KEY in state.array_records
        assert 0 < metrics[DISTORTION_METRIC] < 1.5
        weights = decode_update(build_codec(cfg), {k: a.numpy() for k, a in rec.items()}, glob)
        for k in total:
            total[k] += u[k]
            sent[k] += weights[k] - glob[k]
    residual = {k: a.numpy() for k, a in state[EF_STATE_KEY].items()}
    for k in total:
        np.testing.assert_allclose(sent[k] + residual[k], total[k], atol=1e-5)


def test_client_without_error_feedback_keeps_no_state_and_none_adds_no_metric():
    state = RecordDict()
    rec, metrics = encode_reply(_cfg(codec="q8"), model(1), model(0), state)
    assert EF_STATE_KEY not in state.array_records and DISTORTION_METRIC in metrics
    rec, metrics = encode_reply(_cfg(), model(1), model(0), state)
    assert metrics == {}
    assert all(np.array_equal(rec[k].numpy(), model(1)[k]) for k in model(1))


def _reply(record: ArrayRecord, metrics: dict) -> Message:
    ins = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=7)
    return Message(RecordDict({"arrays": record, "metrics": MetricRecord(metrics)}),
                   reply_to=ins)


def test_server_check_reconstructs_weights_and_rejects_malformed_updates():
    cfg = _cfg(codec="q4")
    glob = model(0)
    local = {k: (v + 0.01 if v.dtype.kind == "f" else v) for k, v in glob.items()}
    rec, metrics = encode_reply(cfg, local, glob, RecordDict())
    codec = build_codec(cfg)
    arrays, got = check_train_reply(_reply(rec, {"num-examples": 5, **metrics}), glob, codec)
    assert np.abs(arrays["w"] - local["w"]).max() < 0.01
    assert got[DISTORTION_METRIC] == metrics[DISTORTION_METRIC]
    truncated = ArrayRecord({PACKED_KEY: Array(rec[PACKED_KEY].numpy()[:-3]),
                             "steps": rec["steps"]})
    with pytest.raises(RejectedReply, match="malformed encoded update: .*wrong length"):
        check_train_reply(_reply(truncated, {"num-examples": 5}), glob, codec)
    raw = ArrayRecord({k: Array(v) for k, v in local.items()})  # weights where bytes belong
    with pytest.raises(RejectedReply, match="malformed encoded update: no encoded tensors"):
        check_train_reply(_reply(raw, {"num-examples": 5}), glob, codec)
    smuggled = ArrayRecord({PACKED_KEY: rec[PACKED_KEY], "steps": rec["steps"],
                            "w2": Array(local["w"])})
    glob2 = {**glob, "w2": glob["w"]}
    with pytest.raises(RejectedReply, match="'w2' is a floating-point parameter sent unencoded"):
        check_train_reply(_reply(smuggled, {"num-examples": 5}), glob2, codec)
    wrong_codec = encode_reply(_cfg(codec="q8"), local, glob, RecordDict())[0]
    with pytest.raises(RejectedReply, match="bad header"):
        check_train_reply(_reply(wrong_codec, {"num-examples": 5}), glob, codec)


def test_broadcast_is_encoded_once_and_decoded_by_the_client():
    cfg = _cfg(**{"codec-down": "q8"})
    glob = model(0)
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in glob.items()}),
                          "config": ConfigRecord({"server-round": 1})})
    msgs = [Message(content, message_type=MessageType.TRAIN, dst_node_id=n) for n in (1, 2)]
    before = content_bytes(content)
    encode_broadcast(msgs, build_codec(cfg, "q8"), np.random.default_rng(0))
    assert msgs[0].content is msgs[1].content
    assert msgs[0].content["arrays"][PACKED_KEY].numpy().dtype == np.uint8
    assert msgs[0].content["arrays"]["steps"].numpy() == 0
    assert content_bytes(msgs[0].content) < before / 2  # 4x on the arrays, less framing
    got = decode_broadcast(cfg, msgs[0].content["arrays"], glob)
    for k in ("w", "b"):
        assert np.abs(got[k] - glob[k]).max() <= (glob[k].max() - glob[k].min()) / 255 + 1e-6
    assert decode_broadcast(_cfg(), ArrayRecord({k: Array(v) for k, v in glob.items()}),
                            glob)["w"].tobytes() == glob["w"].tobytes()


def test_broadcast_with_none_is_untouched():
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(3, np.float32))})})
    msg = Message(content, message_type=MessageType.TRAIN, dst_node_id=1)
    encode_broadcast([msg], CODECS["none"], np.random.default_rng(0))
    assert msg.content["arrays"]["w"].numpy().dtype == np.float32


def test_weights_codec_rejects_unknown_names():
    with pytest.raises(CodecError, match="unexpected array"):
        decode_weights(CODECS["fp16"], encode_weights(CODECS["fp16"], model(0),
                                                      np.random.default_rng(0)), {})


def test_upload_stats_ratio_and_distortion():
    glob = model(0)
    rec, metrics = encode_reply(_cfg(codec="q8"), model(1), glob, RecordDict())
    reply = _reply(rec, {"num-examples": 5, **metrics})
    stats = UploadStats(lossy=True)
    stats.add(reply, glob, {"num-examples": 5, **metrics})
    stats.add(reply, glob, {"num-examples": 5, DISTORTION_METRIC: 0.0})
    out = stats.metrics()
    raw = sum(v.nbytes for v in glob.values())
    assert out["comm/compression_ratio"] == pytest.approx(raw / content_bytes(reply.content))
    assert out["comm/update_distortion"] == pytest.approx(metrics[DISTORTION_METRIC] / 2)
    assert UploadStats(lossy=True).metrics() == {}
    lossless = UploadStats(lossy=False)
    lossless.add(reply, glob, {})
    assert lossless.metrics()["comm/update_distortion"] == 0.0


@pytest.mark.parametrize("raw, fragment", [
    ({"error-feedback": True}, "'error-feedback' = true needs a lossy codec"),
    ({"codec-down": "q4"}, "'codec-down' = 'q4': must be one of none, fp16, q8"),
    ({"qsgd-levels": 0}, "'qsgd-levels' = 0: must be in 1..32767"),
    ({"sparse-fraction": 0.0}, "'sparse-fraction' = 0.0: must be in (0, 1]"),
    ({"sparse-values": "int4"}, "'sparse-values' = 'int4': must be one of fp32, fp16, q8"),
    ({"quant-block-size": -1}, "'quant-block-size' = -1: must be >= 0"),
])
def test_bad_communication_keys_fail_naming_the_key(raw, fragment):
    with pytest.raises(ConfigError) as info:
        parse_run_config(raw, check_names=False)
    assert fragment in str(info.value)


def test_build_codec_applies_the_run_config():
    cfg = _cfg(codec="topk", **{"sparse-fraction": 0.2, "sparse-values": "q8",
                                 "quant-block-size": 64, "qsgd-levels": 3})
    assert build_codec(cfg).fraction == 0.2 and build_codec(cfg).values == "q8"
    assert build_codec(cfg, "qsgd").levels == 3 and build_codec(cfg, "qsgd").block == 64
    assert build_codec(cfg, "q2").block == 64
    with pytest.raises(ConfigError, match="'codec': unknown name 'zip'; valid names"):
        build_codec(cfg, "zip")


# ------------------------------------------------------------------ the packed form
def _packed():
    x = model(0)
    floats = {k: v for k, v in x.items() if v.dtype.kind == "f"}
    return floats, CODECS["q8"].encode(floats, np.random.default_rng(0))


def test_pack_round_trips_and_has_the_stated_size():
    floats, enc = _packed()
    blob = pack(enc)
    assert blob.nbytes == packed_nbytes(CODECS["q8"], {k: v.shape for k, v in floats.items()})
    back = unpack(blob)
    assert list(back) == list(enc) and all(np.array_equal(back[k], enc[k]) for k in enc)
    assert unpack(pack({})) == {}


def _table(*entries, count=None) -> np.ndarray:
    import struct

    out = struct.pack("<I", len(entries) if count is None else count)
    for name, n in entries:
        out += struct.pack("<H", len(name)) + name + struct.pack("<I", n)
    return np.frombuffer(out, np.uint8)


@pytest.mark.parametrize("blob, message", [
    (np.zeros(2, np.uint8), "wrong length"),
    (_table(count=3), "wrong length"),
    (np.concatenate([_table((b"w", 4)), np.zeros(3, np.uint8)]), "wrong length"),
    (np.concatenate([_table((b"w", 4)), np.zeros(5, np.uint8)]), "trailing"),
    (np.concatenate([_table((b"w", 1), (b"w", 1)), np.zeros(2, np.uint8)]), "'w' twice"),
    (np.concatenate([_table((b"\xff\xfe", 1)), np.zeros(1, np.uint8)]), "not UTF-8"),
    (np.zeros(8, np.float32), "uint8"),
])
def test_malformed_pack_is_rejected(blob, message):
    with pytest.raises(CodecError, match=message):
        unpack(blob)


def test_encoded_integer_buffer_is_rejected():
    glob = model(0)
    bad = {PACKED_KEY: pack({"steps": np.zeros(4, np.uint8)})}
    with pytest.raises(CodecError, match="'steps' is encoded but the parameter is int64"):
        decode_update(CODECS["q8"], bad, glob)


def test_with_a_compressed_broadcast_the_update_is_taken_against_what_was_received():
    """Server weights = exact global + (local - decoded broadcast): no downlink drift."""
    cfg = _cfg(codec="fp16", **{"codec-down": "q8"})
    glob = model(0)
    broadcast = _record(encode_weights(build_codec(cfg, "q8"), glob, np.random.default_rng(1)))
    received = decode_broadcast(cfg, broadcast, glob)
    assert np.abs(received["w"] - glob["w"]).max() > 0  # q8 of the weights is lossy
    local = {k: (received[k] + 0.01 if k != "steps" else received[k]) for k in glob}
    rec, _ = encode_reply(cfg, local, received, RecordDict())
    weights = decode_update(build_codec(cfg), {k: a.numpy() for k, a in rec.items()}, glob)
    np.testing.assert_allclose(weights["w"], glob["w"] + 0.01, atol=1e-5)
    np.testing.assert_allclose(weights["b"], glob["b"] + 0.01, atol=1e-5)
