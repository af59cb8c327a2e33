"""Byte accounting: what we count equals Flower's serialised objects, and fp32 payloads
cost their raw size plus a small, bounded framing overhead."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

import fedpers.byte_count as comm
from fedpers.byte_count import ByteCounter, ReplySizes, content_bytes
from fedpers.models import MLP


def _walk(obj, seen: dict[str, int]) -> None:
    """Independent traversal: each object once, by id, children first."""
    for child in (obj.children or {}).values():
        _walk(child, seen)
    seen.setdefault(obj.object_id, len(obj.deflate()))


def _record(model: torch.nn.Module) -> RecordDict:
    arrays = ArrayRecord({k: Array(v.detach().numpy()) for k, v in model.state_dict().items()})
    return RecordDict({"arrays": arrays,
                       "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.5}),
                       "config": ConfigRecord({"server-round": 1})})


def test_content_bytes_equals_independent_traversal():
    torch.manual_seed(0)
    rd = _record(MLP((64,), 10))
    seen: dict[str, int] = {}
    _walk(rd, seen)
    assert content_bytes(rd) == sum(seen.values())


def test_fp32_payload_is_raw_size_plus_bounded_framing():
    torch.manual_seed(0)
    model = MLP((64,), 10)
    n_params = sum(p.numel() for p in model.state_dict().values())
    n_arrays = len(model.state_dict())
    arrays_only = RecordDict({"arrays": ArrayRecord(
        {k: Array(v.detach().numpy()) for k, v in model.state_dict().items()})})
    size = content_bytes(arrays_only)
    assert size >= 4 * n_params
    # framing: a header and a JSON body per array, chunk and record (~480 B an array)
    assert size - 4 * n_params < 600 * n_arrays + 600


def test_size_grows_exactly_with_payload():
    small = RecordDict({"a": ArrayRecord({"w": Array(np.arange(100, dtype=np.float32))})})
    big = RecordDict({"a": ArrayRecord({"w": Array(np.arange(200, dtype=np.float32))})})
    # 100 more float32 values = 400 more bytes; the shape in the JSON header grows by
    # one digit ("100" -> "200" does not; so the difference is exactly 400)
    assert content_bytes(big) - content_bytes(small) == 400


def test_byte_counter_rounds_and_totals():
    c = ByteCounter()
    c.start_round()
    c.add_down(10)
    c.add_up(3)
    c.start_round()
    c.add_down(5)
    m = c.metrics()
    assert m == {"comm/bytes_up": 0.0, "comm/bytes_down": 5.0, "comm/bytes_up_total": 3.0,
                 "comm/bytes_down_total": 15.0}


def test_reply_sizes_size_each_content_once_and_agree_with_content_bytes(monkeypatch):
    torch.manual_seed(0)
    a, b = _record(MLP((64,), 10)), _record(MLP((32,), 10))
    want = {id(a): content_bytes(a), id(b): content_bytes(b)}
    assert want[id(a)] != want[id(b)]
    calls: list[int] = []
    real = comm.content_bytes
    monkeypatch.setattr(comm, "content_bytes", lambda c: calls.append(id(c)) or real(c))
    sizes = ReplySizes()
    assert [sizes(a), sizes(b), sizes(a), sizes(b), sizes(a)] == [
        want[id(a)], want[id(b)], want[id(a)], want[id(b)], want[id(a)]]
    assert sorted(calls) == sorted([id(a), id(b)])  # once each, however often asked


def test_reply_sizes_never_mistake_a_new_content_for_a_cached_one():
    # a content freed and another allocated at the same address: the cache keeps the
    # sized content alive, so the address cannot be reused while it is cached
    sizes = ReplySizes()
    first = sizes(_record(MLP((8,), 10)))
    second = _record(MLP((64,), 10))
    assert sizes(second) == content_bytes(second) != first


def test_sizing_leaves_no_chunk_cache_to_be_pickled_with_the_message():
    # Ray pickles a message's content to ship it to a worker: after sizing it must not
    # carry each array's data twice (Flower's Array caches chunk views of its data)
    from ray import cloudpickle

    torch.manual_seed(0)
    rd = _record(MLP((256,), 10))
    before = len(cloudpickle.dumps(rd))
    size = content_bytes(rd)
    # (the cached object ids, 64 hex characters each, are all it adds)
    assert len(cloudpickle.dumps(rd)) < 1.05 * before
    assert content_bytes(rd) == size  # the chunks are rebuilt when needed
    raw = sum(a.numpy().nbytes for a in rd["arrays"].values())
    assert before < 1.2 * raw  # the check above would see a doubled payload
