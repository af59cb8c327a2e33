"""Property-based: random malformed training replies are rejected before aggregation,
each with its reason, and never change the aggregate; valid replies are accepted.

Each generated reply goes through :func:`fedpers.screening.screen_train_reply` (every
check the round loop runs), then ``consistent_key_sets``, the robust layer and
Flower's FedAvg, as in the round's pipeline (``fedpers.server_pipeline``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedpers.aggregation import AGGREGATORS
from fedpers.arrays import record_to_numpy
from fedpers.codecs import CODECS, build_codec
from fedpers.codecs.update import PACKED_KEY, encode_update
from fedpers.config import parse_run_config
from fedpers.robust import RobustLayer
from fedpers.screening import (
    REJECT_REASONS,
    CheckedReply,
    RejectedReply,
    clean_reply,
    consistent_key_sets,
    screen_train_reply,
)
from strategies import STRATEGIES, StrategyParams

REF = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
       "b": np.full(4, 0.5, np.float32), "n": np.array(3, np.int64)}
MAX_NORM = 100.0
NONE = CODECS["none"]
Q8 = build_codec(parse_run_config({"codec": "q8"}))
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app


def _message(content: dict) -> Message:
    ins = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=7)
    return Message(RecordDict(content), reply_to=ins)


def _arrays_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v).reshape(np.shape(v)))
                        for k, v in arrays.items()})


def _reply(arrays: dict, metrics: dict | None = None) -> Message:
    return _message({"arrays": _arrays_record(arrays),
                     "metrics": MetricRecord(metrics or {"num-examples": 10, "steps": 3,
                                                         "train-loss": 0.5})})


# ------------------------------------------------------------------ generators
small = st.floats(-1.0, 1.0, allow_nan=False, width=32)


@st.composite
def valid_arrays(draw) -> dict[str, np.ndarray]:
    """The global model plus a small update (norm well below MAX_NORM)."""
    return {"w": REF["w"] + draw(hnp.arrays(np.float32, (3, 4), elements=small)),
            "b": REF["b"] + draw(hnp.arrays(np.float32, (4,), elements=small)),
            "n": np.array(draw(st.integers(0, 100)), np.int64)}


@st.composite
def malformed(draw, base: dict[str, np.ndarray]) -> tuple[Message, str]:
    """A reply that breaks exactly one rule, and the reason it must be rejected for."""
    arrays = {k: v.copy() for k, v in base.items()}
    metrics = {"num-examples": 10, "steps": 3, "train-loss": 0.5}
    kind = draw(st.sampled_from(["shape", "dtype", "nonfinite", "unknown", "norm",
                                 "records", "metrics", "codec"]))
    key = draw(st.sampled_from(["w", "b"]))
    if kind == "shape":
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)
                     .filter(lambda s, k=key: s != REF[k].shape))
        arrays[key] = np.zeros(shape, np.float32)
    elif kind == "dtype":
        which = draw(st.sampled_from(["w", "b", "n"]))
        dtype = draw(st.sampled_from([np.float16, np.float64, np.int32, np.int64, np.uint8,
                                      np.float32]).filter(lambda d, w=which:
                                                          np.dtype(d) != REF[w].dtype))
        arrays[which] = arrays[which].astype(dtype)
    elif kind == "nonfinite":
        flat = arrays[key].reshape(-1)
        where = draw(st.lists(st.integers(0, flat.size - 1), min_size=1, max_size=flat.size,
                              unique=True))
        flat[where] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif kind == "unknown":
        name = draw(st.from_regex(r"[a-z_.]{1,8}", fullmatch=True).filter(
            lambda s: s not in REF))
        arrays[name] = np.zeros(draw(hnp.array_shapes(max_dims=2, max_side=3)), np.float32)
    elif kind == "norm":
        scale = draw(st.floats(2 * MAX_NORM, 1e30))
        signs = draw(hnp.arrays(np.float32, REF[key].shape, elements=st.sampled_from([-1, 1])))
        arrays[key] = (REF[key] + scale * signs / np.sqrt(signs.size)).astype(np.float32)
        if not np.isfinite(arrays[key]).all():  # pragma: no cover - 1e30 stays finite
            kind = "nonfinite"
    elif kind == "records":
        how = draw(st.sampled_from(["no-metrics", "no-arrays", "two-arrays", "empty",
                                    "two-metrics"]))
        content = {"arrays": _arrays_record(arrays), "metrics": MetricRecord(metrics)}
        if how == "no-metrics":
            del content["metrics"]
        elif how == "no-arrays":
            del content["arrays"]
        elif how == "two-arrays":
            content["more"] = _arrays_record({"w": arrays["w"]})
        elif how == "empty":
            content["arrays"] = ArrayRecord()
        else:
            content["other"] = MetricRecord({"num-examples": 1})
        return _message(content), "records"
    elif kind == "metrics":
        metrics = draw(st.sampled_from([
            {"num-examples": 0}, {"num-examples": -3}, {"train-loss": 0.1},
            {"num-examples": float("nan")}, {"num-examples": float("inf")},
            {"num-examples": 10, "train-loss": float("nan")},
            {"num-examples": 10, "train-loss": float("-inf")},
            {"num-examples": 10, "steps": 0}]))
    elif kind == "codec":
        return draw(garbled_payload(arrays)), "codec"
    return _reply(arrays, metrics), kind


@st.composite
def garbled_payload(draw, arrays: dict[str, np.ndarray]) -> Message:
    """A q8-encoded update, truncated, extended, with a bad header or the wrong dtype."""
    up = encode_update(Q8, arrays, REF, np.random.default_rng(draw(st.integers(0, 99))))
    blob = up.payload[PACKED_KEY]
    how = draw(st.sampled_from(["truncate", "extend", "magic", "dtype"]))
    if how == "truncate":
        blob = blob[:draw(st.integers(0, len(blob) - 1))].copy()
    elif how == "extend":
        extra = draw(hnp.arrays(np.uint8, draw(st.integers(1, 16))))
        blob = np.concatenate([blob, extra])
    elif how == "magic":  # the first byte of the first tensor (after the name table)
        table = 4 + sum(2 + len(k) + 4 for k in ("w", "b"))
        blob = blob.copy()
        blob[table] = draw(st.integers(0, 255).filter(lambda b: b != 0xFC))
    else:
        blob = blob.view(np.uint8)[: (len(blob) // 4) * 4].view(np.float32)
    return _reply({**up.payload, PACKED_KEY: blob})


# ------------------------------------------------------------------ properties
@SETTINGS
@given(valid_arrays())
def test_valid_replies_are_accepted_unchanged(arrays):
    checked = screen_train_reply(_reply(arrays), REF, NONE, max_norm=MAX_NORM)
    for k, v in arrays.items():
        np.testing.assert_array_equal(checked.arrays[k], v)
    # the norm the screening measured is the one the round logs (clients/update_norm_*)
    expected = np.sqrt(sum(np.sum((v.astype(np.float64) - REF[k]) ** 2)
                           for k, v in arrays.items() if v.dtype.kind == "f"))
    assert checked.norm == pytest.approx(expected, rel=1e-9, abs=1e-12)
    up = encode_update(Q8, arrays, REF, np.random.default_rng(0))
    decoded = screen_train_reply(_reply(up.payload), REF, Q8, max_norm=MAX_NORM)
    assert set(decoded.arrays) == set(REF)


@SETTINGS
@given(st.data())
def test_each_malformed_reply_is_rejected_with_its_reason(data):
    base = data.draw(valid_arrays())
    msg, reason = data.draw(malformed(base))
    codec = Q8 if reason == "codec" else NONE
    with pytest.raises(RejectedReply) as err:
        screen_train_reply(msg, REF, codec, max_norm=MAX_NORM)
    assert err.value.reason == reason, str(err.value)
    assert err.value.reason in REJECT_REASONS and str(err.value)


def _pipeline(replies: list[tuple[int, Message]], aggregation: str, codec=NONE):
    """The round loop's path from replies to FedAvg's aggregate; (arrays, reasons)."""
    cfg = parse_run_config({"num-clients": 10, "aggregation": aggregation, "krum-f": 0,
                            "trim-fraction": 0.2})
    reasons: Counter[str] = Counter()
    checked: list[tuple[CheckedReply, Message]] = []
    for pid, msg in replies:
        try:
            checked.append((screen_train_reply(msg, REF, codec, max_norm=MAX_NORM,
                                               partition_id=pid), msg))
        except RejectedReply as exc:
            reasons[exc.reason] += 1
    keep, drop = consistent_key_sets([c for c, _ in checked])
    reasons["keys"] += len(drop)
    kept = {id(c) for c in keep}
    valid = sorted(((c, m) for c, m in checked if id(c) in kept),
                   key=lambda cm: cm[0].partition_id)
    outcome = RobustLayer(cfg).apply([c for c, _ in valid], REF)
    strategy = STRATEGIES["fedavg"].build(StrategyParams.from_config(cfg))
    arrays, _ = strategy.aggregate_train(1, [clean_reply(valid[i][1], c)
                                             for i, c in outcome.passed])
    return record_to_numpy(arrays), reasons


@SETTINGS
@given(st.data())
def test_malformed_replies_never_change_the_aggregate(data):
    goods = data.draw(st.lists(valid_arrays(), min_size=2, max_size=4))
    n_bad = data.draw(st.integers(0, len(goods) - 1))
    bads = []
    for _ in range(n_bad):
        if data.draw(st.booleans()):
            bads.append(data.draw(malformed(data.draw(valid_arrays()))))
        else:  # a parameter missing: passes the checks, dropped by the key-set rule
            partial = dict(data.draw(valid_arrays()))
            del partial[data.draw(st.sampled_from(["w", "b"]))]
            bads.append((_reply(partial), "keys"))
    aggregation = data.draw(st.sampled_from(sorted(AGGREGATORS)))
    good_ids = list(range(len(goods)))
    bad_ids = list(range(len(goods), len(goods) + len(bads)))
    order = data.draw(st.permutations(good_ids + bad_ids))

    def mixed():
        # codec payloads need the q8 codec: compare those in their own pass
        out = []
        for pid in order:
            if pid < len(goods):
                out.append((pid, _reply(goods[pid])))
            elif bads[pid - len(goods)][1] != "codec":
                out.append((pid, bads[pid - len(goods)][0]))
        return out

    clean, none_rejected = _pipeline([(i, _reply(a)) for i, a in enumerate(goods)],
                                     aggregation)
    assert sum(none_rejected.values()) == 0
    got, rejected = _pipeline(mixed(), aggregation)
    for k in clean:
        np.testing.assert_array_equal(got[k], clean[k])
    expected = Counter(reason for _, reason in bads if reason != "codec")
    assert +rejected == expected


@SETTINGS
@given(st.data())
def test_garbled_codec_payloads_never_change_the_aggregate(data):
    goods = data.draw(st.lists(valid_arrays(), min_size=2, max_size=3))
    rng = np.random.default_rng(0)
    payloads = [encode_update(Q8, a, REF, rng).payload for a in goods]
    bad = [data.draw(garbled_payload(data.draw(valid_arrays())))
           for _ in range(data.draw(st.integers(1, len(goods) - 1)))]
    aggregation = data.draw(st.sampled_from(sorted(AGGREGATORS)))
    clean, _ = _pipeline([(i, _reply(p)) for i, p in enumerate(payloads)], aggregation, Q8)
    mixed = [(i, _reply(p)) for i, p in enumerate(payloads)]
    mixed += [(len(goods) + j, m) for j, m in enumerate(bad)]
    got, rejected = _pipeline(mixed, aggregation, Q8)
    for k in clean:
        np.testing.assert_array_equal(got[k], clean[k])
    assert +rejected == Counter({"codec": len(bad)})


def test_a_strategy_that_needs_steps_rejects_replies_without_them():
    arrays = {k: v.copy() for k, v in REF.items()}
    msg = _reply(arrays, {"num-examples": 10, "train-loss": 0.5})
    assert screen_train_reply(msg, REF, NONE).metrics["num-examples"] == 10
    with pytest.raises(RejectedReply, match="missing metric.*'steps'") as err:
        screen_train_reply(_reply(arrays, {"num-examples": 10}), REF, NONE,
                           required_metrics=("steps",))
    assert err.value.reason == "metrics"


def test_num_examples_above_the_handshake_declaration_is_rejected():
    arrays = {k: v.copy() for k, v in REF.items()}
    honest = {"num-examples": 10, "train-loss": 0.5}
    assert screen_train_reply(_reply(arrays, honest), REF, NONE, declared_examples=10)
    assert screen_train_reply(_reply(arrays, honest), REF, NONE, declared_examples=0)
    with pytest.raises(RejectedReply, match="num-examples 1e\\+09 exceeds the 10") as err:
        screen_train_reply(_reply(arrays, {"num-examples": 10**9, "train-loss": 0.5}), REF,
                           NONE, declared_examples=10)
    assert err.value.reason == "metrics"


def test_the_norm_bound_is_inclusive_and_off_at_zero():
    arrays = {**REF, "b": REF["b"] + np.float32([3, 4, 0, 0])}  # update norm exactly 5
    assert screen_train_reply(_reply(arrays), REF, NONE, max_norm=5.0)
    assert screen_train_reply(_reply(arrays), REF, NONE, max_norm=0.0)
    with pytest.raises(RejectedReply, match=r"update norm 5 exceeds max-update-norm 4.99"):
        screen_train_reply(_reply(arrays), REF, NONE, max_norm=4.99)
