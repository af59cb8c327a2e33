"""Compressed uploads through Flower's real Simulation Engine, read back from MLflow.

Two runs (digits, 3 clients, 2 rounds): q8 with error feedback, and top-k with
fp16 values, error feedback and an fp16 broadcast. The uplink bytes must match
what the encoded sizes predict, against an fp32 baseline computed the same way.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import metric_history
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedpers.byte_count import content_bytes
from fedpers.codecs import build_codec
from fedpers.codecs.update import PACKED_KEY, packed_nbytes
from fedpers.config import parse_run_config
from fedpers.data import TASKS
from fedpers.simulation import run_simulation

pytestmark = pytest.mark.slow

BASE = {"task": "digits", "num-clients": 3, "num-server-rounds": 2, "local-epochs": 2,
        "momentum": 0.9, "partition": "iid", "batch-size": 32, "lr": 0.1,
        "error-feedback": True}
RUNS = {
    "q8-ef": {"codec": "q8"},
    "topk-ef-down": {"codec": "topk", "sparse-fraction": 0.1, "sparse-values": "fp16",
                     "codec-down": "fp16"},
}


def _residual_must_persist(msg, context, call_next):
    """A client mod: from round 2 on, the error-feedback residual must be in the state."""
    from flwr.app import MessageType

    if msg.metadata.message_type == MessageType.TRAIN:
        rnd = int(msg.content["config"]["server-round"])
        if rnd >= 2 and "ef-residual" not in context.state.array_records:
            raise RuntimeError(f"round {rnd}: no error-feedback residual in the Context state")
    return call_next(msg, context)


def _shapes() -> dict[str, tuple[int, ...]]:
    model = TASKS["digits"].build_model((64,), 10)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _upload_bytes(arrays: dict[str, np.ndarray], distortion: bool) -> int:
    metrics = {"num-examples": 480, "train-loss": 0.1, "steps": 30, "partition-id": 1}
    if distortion:
        metrics["codec-distortion"] = 0.1
    return content_bytes(RecordDict({"arrays": ArrayRecord({k: Array(v)
                                                            for k, v in arrays.items()}),
                                     "metrics": MetricRecord(metrics)}))


def _expected(codec, shapes) -> tuple[int, int]:
    """(fp32 upload, encoded upload) of one client, from the codec's size formula."""
    rng = np.random.default_rng(0)  # random bytes: Flower would merge identical chunks
    fp32 = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    enc = {PACKED_KEY: rng.integers(0, 255, packed_nbytes(codec, shapes), dtype=np.uint8)}
    return _upload_bytes(fp32, False), _upload_bytes(enc, True)


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('codec-e2e') / 'mlflow.db'}"
    cfg = parse_run_config({**BASE, **RUNS[request.param], "tracking-uri": uri,
                            "experiment": "codec-e2e"})
    from fedpers.client_app import build_client_app

    run_id = run_simulation(cfg, client_app=build_client_app(mods=[_residual_must_persist]))
    return request.param, cfg, metric_history(uri, run_id)


def test_uplink_shrinks_by_the_expected_ratio(run):
    name, cfg, hist = run
    shapes = _shapes()
    fp32, enc = _expected(build_codec(cfg), shapes)
    assert [v for _, v in hist["clients/trained"]] == [3, 3]
    assert [v for _, v in hist["clients/rejected"]] == [0, 0]
    assert [v for _, v in hist["clients/failed"]] == [0, 0]  # the residual persisted
    for rnd, up in hist["comm/bytes_up"]:
        evaluation = up - 3 * enc  # the rest: 3 metric-only evaluation replies
        if name.startswith("topk"):  # exact size depends on the index gaps: at most enc
            assert 0 < evaluation, rnd
        else:
            assert abs(evaluation - 3 * 300) < 3 * 250, (rnd, up, 3 * enc)
        ratio = (3 * fp32 + evaluation) / up  # the fp32 baseline with the same evaluation
        expected = fp32 / enc
        assert ratio >= expected * 0.9, (rnd, ratio, expected)
        assert ratio > {"q8-ef": 3.3, "topk-ef-down": 7.5}[name], ratio


def test_compression_metrics_are_logged(run):
    name, cfg, hist = run
    raw = 4 * sum(int(np.prod(s)) for s in _shapes().values())
    for (_, ratio), (_, up) in zip(hist["comm/compression_ratio"], hist["comm/bytes_up"],
                                   strict=True):
        assert 1.5 < ratio < raw * 3 / (up - 3 * 2000)
    distortion = [v for _, v in hist["comm/update_distortion"]]
    assert len(distortion) == 2
    assert all(0 < d < {"q8-ef": 0.05, "topk-ef-down": 1.0}[name] for d in distortion)


def test_accuracy_is_finite_and_learning(run):
    name, _, hist = run
    acc = [v for _, v in hist["eval/global_accuracy"]]
    assert np.isfinite(acc).all() and np.isfinite([v for _, v in hist["train/loss"]]).all()
    if name == "q8-ef":
        assert acc[-1] > 0.5  # as the fp32 e2e run: digits learns fast; chance is 0.1


def test_broadcast_bytes_match_the_codec_down(run):
    """codec-down fp16: each broadcast is the packed fp16 model; none: the fp32 model."""
    name, cfg, hist = run
    shapes = _shapes()
    rng = np.random.default_rng(0)

    def message(arrays):
        return content_bytes(RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord({"server-round": 1})}))

    fp32 = message({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})
    fp16 = message({PACKED_KEY: rng.integers(0, 255, packed_nbytes(build_codec(cfg, "fp16"),
                                                                   shapes), dtype=np.uint8)})
    expected = fp32 if cfg.codec_down == "none" else fp16
    for _, down in hist["comm/bytes_down"]:  # 3 train + 3 evaluation broadcasts
        assert abs(down - 6 * expected) < 6 * 100, (down, 6 * fp16, 6 * fp32)
