"""DP-FedAvg's clipping and noise (fedpers.privacy.dpfedavg): golden numbers by hand
and the noise's standard deviation measured on a seeded draw."""

from __future__ import annotations

import numpy as np
import pytest

from fedpers.config import parse_run_config
from fedpers.privacy import PrivacyLayer, build_privacy, sampling_rate
from fedpers.privacy.accountant import RdpAccountant
from fedpers.privacy.dpfedavg import DpFedAvg, clip_update
from fedpers.screening import CheckedReply, update_norm

REF = {"w": np.array([1.0, 1.0], np.float32), "b": np.array([0.0], np.float32),
       "steps": np.array([7], np.int64)}


def test_clip_update_golden():
    # update (3, 4 | 0): norm 5, clipped to 1 -> (0.6, 0.8 | 0)
    arrays = {"w": np.array([4.0, 5.0], np.float32), "b": np.array([0.0], np.float32),
              "steps": np.array([99], np.int64)}
    out, norm = clip_update(arrays, REF, 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(out["w"], [1.6, 1.8], rtol=1e-6)
    assert out["w"].dtype == np.float32
    assert out["steps"][0] == 99  # integer buffers pass through
    assert update_norm(out, REF) == pytest.approx(1.0, rel=1e-6)
    same, _ = clip_update(arrays, REF, 10.0)  # inside the ball: unchanged
    np.testing.assert_array_equal(same["w"], arrays["w"])


def _reply(pid: int, w: list[float], b: float = 0.0) -> CheckedReply:
    return CheckedReply(pid, {"w": np.array(w, np.float32), "b": np.array([b], np.float32),
                              "steps": np.array([3], np.int64)},
                        {"num-examples": 10 * (pid + 1), "train-loss": 0.5})


def test_fixed_denominator_average_of_clipped_updates():
    """z -> 0: the release is sum clip(u_i) / m. Updates (3, 4) and (0, 1) with C = 1
    clip to (0.6, 0.8) and (0, 1); m = 2 gives (0.3, 0.9), and with m = 4 selected
    (two failed) (0.15, 0.45). Every passed reply carries the same model."""
    dp = DpFedAvg(clip_norm=1.0, noise_multiplier=1e-12, seed=0)
    passed = [(0, _reply(0, [4.0, 5.0])), (3, _reply(1, [1.0, 2.0]))]
    out = dp.apply(1, passed, REF, selected=2)
    assert [i for i, _ in out.passed] == [0, 3]
    for _, c in out.passed:
        np.testing.assert_allclose(c.arrays["w"], [1.3, 1.9], rtol=1e-6)
        np.testing.assert_allclose(c.arrays["b"], [0.0], atol=1e-9)
        assert c.arrays["steps"][0] == 3
    assert out.metrics["privacy/clipped_server"] == 1.0
    out4 = dp.apply(1, passed, REF, selected=4)
    np.testing.assert_allclose(out4.passed[0][1].arrays["w"], [1.15, 1.45], rtol=1e-6)
    assert out4.metrics["privacy/noise_std"] == pytest.approx(1e-12 / 4)


def test_noise_std_is_z_c_over_m_and_seeded():
    d = 200_000
    ref = {"w": np.zeros(d, np.float32)}
    passed = [(i, CheckedReply(i, {"w": np.zeros(d, np.float32)}, {})) for i in range(4)]
    dp = DpFedAvg(clip_norm=2.0, noise_multiplier=1.5, seed=7)
    out = dp.apply(5, passed, ref, selected=4)
    noise = out.passed[0][1].arrays["w"].astype(np.float64)
    expected = 1.5 * 2.0 / 4  # z C / m
    assert out.metrics["privacy/noise_std"] == pytest.approx(expected)
    # the sample std of 2e5 Gaussians is within 0.5 % of sigma with overwhelming odds
    assert noise.std() == pytest.approx(expected, rel=0.005)
    assert abs(noise.mean()) < 5 * expected / np.sqrt(d)
    again = dp.apply(5, passed, ref, selected=4).passed[0][1].arrays["w"]
    np.testing.assert_array_equal(again, out.passed[0][1].arrays["w"])  # same seed, round
    other = dp.apply(6, passed, ref, selected=4).passed[0][1].arrays["w"]
    assert not np.array_equal(other, again)
    other_seed = DpFedAvg(2.0, 1.5, seed=8).apply(5, passed, ref, 4).passed[0][1].arrays["w"]
    assert not np.array_equal(other_seed, again)


def test_sampling_rate_and_layer():
    cfg = parse_run_config({"task": "digits", "num-clients": 10, "fraction-train": 0.3,
                            "dp": "client-clipping", "dp-noise-multiplier": 1.2})
    assert sampling_rate(cfg) == pytest.approx(0.3)
    layer = build_privacy(cfg)
    assert isinstance(layer, PrivacyLayer)
    assert layer.metrics(4)["privacy/epsilon"] == pytest.approx(
        RdpAccountant(0.3, 1.2, 1e-5).epsilon(4))
    assert layer.metrics(0)["privacy/epsilon"] == 0.0
    assert build_privacy(cfg.replace(**{"dp": "none", "dp-noise-multiplier": 1.0})) is None
    # a simulated clock draws from the clients online: no amplification claimed
    clocked = cfg.replace(**{"device-profile": "lognormal"})
    assert sampling_rate(clocked) == 1.0


def test_float32_rounding_of_a_clipped_update_is_not_counted():
    """A client-clipped float32 update can come back a hair above C; the server's
    re-clip leaves it (numerically) as it is and does not count it."""
    rng = np.random.default_rng(1)  # this draw rounds to ||u|| = C + 4.7e-8
    ref = {"w": rng.normal(size=1000).astype(np.float32)}
    moved = {"w": (ref["w"] + rng.normal(size=1000)).astype(np.float32)}
    clipped, _ = clip_update(moved, ref, 0.7)
    assert update_norm(clipped, ref) > 0.7
    passed = [(0, CheckedReply(0, clipped, {}))]
    out = DpFedAvg(0.7, 1e-12, seed=0).apply(1, passed, ref, selected=1)
    assert out.metrics["privacy/clipped_server"] == 0.0
    np.testing.assert_allclose(out.passed[0][1].arrays["w"], clipped["w"], atol=1e-6)
