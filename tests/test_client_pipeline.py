"""The client's upload pipeline (fedpers.client_pipeline): the steps, their order,
one decode of the broadcast per call, one codec per process, the error-feedback state."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict

from fedpers import client_pipeline
from fedpers.arrays import to_array_record
from fedpers.client_app import train
from fedpers.client_pipeline import (
    EF_STATE_KEY,
    AttackStep,
    DpClipStep,
    EncodeStep,
    ErrorFeedback,
    RoundInputs,
    Upload,
    build_client_pipeline,
    codec_for,
    run_pipeline,
)
from fedpers.codecs.update import encode_update, encode_weights
from fedpers.config import parse_run_config
from fedpers.seeds import Stream, derive_seed
from tests.clients.personal_helpers import (
    bn_task,  # noqa: F401  (fixture)
    context,
    initial_arrays,
    run_config,
    train_message,
)


def _cfg(**keys):
    return parse_run_config({"task": "digits", "num-clients": 4, **keys})


def test_steps_in_order_attack_clip_encode():
    cfg = _cfg(**{"attack": "sign-flip", "attack-fraction": 1.0, "dp": "client-clipping",
                  "dp-clip-norm": 0.5, "codec": "q8"})
    steps = build_client_pipeline(cfg, 0)
    assert [type(s) for s in steps] == [AttackStep, DpClipStep, EncodeStep]
    assert steps[1].clip_norm == 0.5


def test_an_honest_client_without_dp_only_encodes():
    assert [type(s) for s in build_client_pipeline(_cfg(), 0)] == [EncodeStep]


def test_the_codec_is_built_once_per_process():
    cfg = _cfg(codec="topk")
    assert codec_for(cfg) is codec_for(parse_run_config(cfg.to_dict()))
    assert codec_for(cfg) is not codec_for(_cfg(codec="q8"))


def test_clip_step_scales_the_update_to_the_clip_norm():
    received = {"w": np.zeros(2, np.float32)}
    upload = Upload({"w": np.array([3.0, 4.0], np.float32)})
    inputs = RoundInputs(1, 0, received, RecordDict())
    out = DpClipStep(1.0).apply(upload, inputs)
    np.testing.assert_allclose(out.shared["w"], [0.6, 0.8], rtol=1e-6)
    assert upload.shared["w"][0] == 3.0  # the input upload is not changed


def test_encode_step_threads_the_residual_through_the_context_state():
    """Two rounds of q8 with error feedback: the step gives what encode_update gives
    with the round's codec seed and the residual the step itself stored."""
    cfg = _cfg(codec="q8", **{"error-feedback": True})
    step = build_client_pipeline(cfg, 3)[-1]
    codec = codec_for(cfg)
    rng = np.random.default_rng(0)
    received = {"w": rng.normal(size=(5, 7)).astype(np.float32)}
    state = RecordDict()
    residual = None
    for rnd in (1, 2):
        shared = {"w": received["w"] + rng.normal(size=(5, 7)).astype(np.float32)}
        out = run_pipeline([step], Upload(shared), RoundInputs(rnd, 3, received, state))
        seed = derive_seed(cfg.seed, Stream.UPLOAD_CODEC, rnd, 3)
        want = encode_update(codec, shared, received, np.random.default_rng(seed),
                             residual=residual, error_feedback=True)
        assert out.shared.keys() == want.payload.keys()
        for k in want.payload:
            np.testing.assert_array_equal(out.shared[k], want.payload[k])
        assert out.metrics["codec-distortion"] == want.distortion
        np.testing.assert_array_equal(ErrorFeedback(state).get()["w"], want.residual["w"])
        residual = want.residual
    assert np.abs(residual["w"]).max() > 0  # a lossy codec left a residual to feed back


def test_lossless_codec_sends_extra_records_as_they_are():
    step = EncodeStep(codec_for(_cfg()), error_feedback=True, seed=0)
    control = {"w": np.ones(3, np.float32)}
    out = step.apply(Upload({"w": np.zeros(3, np.float32)}, {"control": control}),
                     RoundInputs(1, 0, {}, RecordDict()))
    assert out.extra["control"] is control


def test_error_feedback_state_round_trips_and_refuses_other_records():
    state = RecordDict()
    memory = ErrorFeedback(state)
    memory.put({"w": np.arange(3, dtype=np.float32)})
    memory.put({"c": np.ones(2, np.float32)}, f"{EF_STATE_KEY}/control")
    state["scaffold-ci"] = to_array_record({"c": np.zeros(1, np.float32)})
    saved = memory.state_dict()
    assert sorted(saved) == [EF_STATE_KEY, f"{EF_STATE_KEY}/control"]
    fresh = ErrorFeedback(RecordDict())
    fresh.load_state_dict(saved)
    got = fresh.state_dict()
    assert got.keys() == saved.keys()
    for name in saved:
        for k in saved[name]:
            np.testing.assert_array_equal(got[name][k], saved[name][k])
    with pytest.raises(KeyError, match="scaffold-ci"):
        fresh.load_state_dict({"scaffold-ci": {"c": np.zeros(1, np.float32)}})


@pytest.mark.usefixtures("task_identity")
def test_train_decodes_the_broadcast_once(bn_task, monkeypatch):  # noqa: F811
    """Attacker, DP clipping, q8 down and up: one decode per call (it was four), and
    the codecs are not built again on the second call."""
    run_cfg = run_config(**{"codec": "q8", "codec-down": "q8", "attack": "sign-flip",
                            "attack-fraction": 1.0, "dp": "client-clipping",
                            "num-clients": 2})
    decodes, builds = [], []
    real_decode = client_pipeline.decode_weights
    monkeypatch.setattr(client_pipeline, "decode_weights",
                        lambda *a: decodes.append(1) or real_decode(*a))
    real_build = client_pipeline.CODECS.build
    monkeypatch.setattr(client_pipeline.CODECS, "build",
                        lambda *a: builds.append(a[0]) or real_build(*a))
    client_pipeline._build_codec.cache_clear()
    ctx = context(run_cfg)
    arrays = initial_arrays(run_cfg)
    cfg = parse_run_config(run_cfg)
    for rnd in (1, 2):
        msg = train_message(run_cfg, arrays, rnd)
        down = codec_for(cfg, "q8")
        msg.content["arrays"] = to_array_record(
            encode_weights(down, arrays, np.random.default_rng(rnd)))
        before = len(decodes)
        reply = train(msg, ctx)
        assert len(decodes) - before == 1
        assert "codec-distortion" in reply.content["metrics"]
    assert sorted(builds) == ["q8"]  # one q8 codec, for both directions, built once
