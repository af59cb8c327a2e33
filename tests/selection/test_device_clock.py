"""The simulated clock (fedpers.devices): arithmetic on hand-made profiles, seeded draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedpers.config import parse_run_config
from fedpers.devices import (
    COMPUTE_SPS,
    DOWN_BPS,
    UP_BPS,
    Clock,
    DeviceError,
    DeviceParams,
    DeviceProfile,
    build_clock,
    draw_profile,
    lognormal_profiles,
    reported_profile,
    samples_processed,
    steps_within_deadline,
    time_round,
)

# 100 samples/s, 1 MB/s up, 4 MB/s down
P = DeviceProfile(compute_sps=100.0, up_bps=1e6, down_bps=4e6)


def test_a_clients_time_is_compute_plus_both_transfers():
    t = P.seconds(samples=250, bytes_down=2e6, bytes_up=3e6)
    assert (t.compute_s, t.down_s, t.up_s) == (2.5, 0.5, 3.0)
    assert t.total_s == 6.0


def test_round_lasts_as_long_as_its_slowest_client():
    timing = time_round({0: 2.0, 3: 7.5, 5: 4.0})
    assert timing.duration_s == 7.5 and timing.finished == (0, 3, 5) and timing.late == ()


def test_deadline_drops_the_late_and_the_round_lasts_the_deadline():
    timing = time_round({0: 2.0, 3: 7.5, 5: 4.0}, deadline=5.0)
    assert timing.finished == (0, 5) and timing.late == (3,) and timing.duration_s == 5.0
    on_time = time_round({0: 2.0, 5: 5.0}, deadline=5.0)  # exactly on time counts
    assert on_time.late == () and on_time.duration_s == 5.0
    assert time_round({}, deadline=5.0).duration_s == 0.0


def test_clock_accumulates_total_time_with_exact_bytes():
    clock = Clock({0: P, 1: DeviceProfile(50.0, 2e6, 2e6)}, seed=0, deadline=0.0)
    t0 = clock.seconds(0, 100, bytes_down=4e6, bytes_up=1e6)  # 1 + 1 + 1
    t1 = clock.seconds(1, 100, bytes_down=2e6, bytes_up=2e6)  # 2 + 1 + 1
    assert (t0, t1) == (3.0, 4.0)
    assert clock.end_round({0: t0, 1: t1}).duration_s == 4.0
    assert clock.end_round({0: 1.5}).duration_s == 1.5
    assert clock.total_s == 5.5
    # predictions use the last measured bytes, or the fallback before any were measured
    assert clock.expected_seconds(0, 200, fallback_bytes=1.0) == 2.0 + 1.0 + 1.0
    clock2 = Clock({0: P}, seed=0)
    assert clock2.expected_seconds(0, 200, fallback_bytes=4e6) == 2.0 + 1.0 + 4.0


def test_samples_processed_is_exact_for_local_sgd():
    from fedpers.training import train_local

    x = np.ones((10, 1), np.float32)
    for steps in (1, 3, 4, 7, 8, 20):
        model = torch.nn.Linear(1, 1)
        seen: list[int] = []
        model.register_forward_hook(lambda m, inp, out, seen=seen: seen.append(len(inp[0])))
        res = train_local(model, x, np.zeros(10, np.int64), kind="anomaly", epochs=2,
                          batch_size=3, lr=0.01, momentum=0.0, seed=0,
                          device=torch.device("cpu"), max_steps=steps)
        assert res.steps == min(steps, 8)
        assert sum(seen) == samples_processed(res.steps, 10, 3)
    # 10 samples, batches of 3: 3, 3, 3, 1 per epoch
    assert [samples_processed(s, 10, 3) for s in (0, 1, 3, 4, 5, 8)] == [0, 3, 9, 10, 13, 20]
    assert samples_processed(4, 0, 3) == 12  # unknown data size: an upper bound


def test_step_budget_fits_the_deadline_after_the_transfers():
    # 10 s deadline, 1 s down (4 MB), 2 s up (2 MB): 7 s of compute = 700 samples
    assert steps_within_deadline(P, 10.0, batch_size=32, bytes_down=4e6, bytes_up=2e6) == 21
    assert steps_within_deadline(P, 1.0, batch_size=32, bytes_down=4e6, bytes_up=2e6) == 1  # >= 1
    clock = Clock({0: P}, seed=0, deadline=10.0)
    clock.seconds(0, 0, 0, bytes_up=2e6 / 1.1)  # its last upload; 10% margin on top
    assert clock.step_budget(0, 32, bytes_down=4e6, fallback_bytes=9e9) == 21


def test_online_and_dropout_draws_are_seeded_per_round_and_client():
    profiles = {p: DeviceProfile(1.0, 1.0, 1.0, availability=0.7, dropout=0.2)
                for p in range(200)}
    clock = Clock(profiles, seed=5)
    a = clock.online(3, range(200))
    assert a == Clock(profiles, seed=5).online(3, range(200))
    assert a != clock.online(4, range(200))
    assert clock.online(3, [7, 9, 11]) == [p for p in a if p in (7, 9, 11)]  # per client
    assert 0.6 < len(a) / 200 < 0.8
    drops = [clock.drops_out(r, p) for r in range(1, 6) for p in range(200)]
    assert 0.15 < np.mean(drops) < 0.25
    assert drops == [Clock(profiles, seed=5).drops_out(r, p) for r in range(1, 6)
                     for p in range(200)]
    always = Clock({0: DeviceProfile(1.0, 1.0, 1.0)}, seed=5)
    assert all(always.online(r, [0]) == [0] and not always.drops_out(r, 0)
               for r in range(50))


def test_lognormal_profiles_have_the_documented_medians_and_a_10x_spread():
    profiles = lognormal_profiles(4000, seed=1)
    for attr, dist in (("compute_sps", COMPUTE_SPS), ("up_bps", UP_BPS),
                       ("down_bps", DOWN_BPS)):
        v = np.array([getattr(p, attr) for p in profiles.values()])
        assert np.median(v) == pytest.approx(dist.median, rel=0.05), attr
        p5, p95 = np.percentile(v, [5, 95])
        assert 8.5 < p95 / p5 < 11.5, attr
    assert COMPUTE_SPS.median == pytest.approx(1 / (0.005 * math.e))
    # a client's profile depends only on the seed and its id, not on how many clients
    assert draw_profile(1, 17) == profiles[17] == lognormal_profiles(20, seed=1)[17]
    assert draw_profile(2, 17) != profiles[17]


def test_lognormal_availability_has_the_configured_mean():
    profiles = lognormal_profiles(3000, seed=0, availability=0.8, dropout=0.1)
    avail = np.array([p.availability for p in profiles.values()])
    assert avail.mean() == pytest.approx(0.8, abs=0.02)
    assert 0.05 < np.mean(avail < 0.5) < 0.11  # Beta(3.2, 0.8): 8% are rarely online
    assert all(p.dropout == 0.1 for p in profiles.values())


def test_build_clock_follows_the_config():
    assert build_clock(DeviceParams.from_config(parse_run_config({}))) is None
    cfg = parse_run_config({"num-clients": 5, "device-profile": "lognormal",
                            "round-deadline": 3.0, "seed": 9})
    clock = build_clock(DeviceParams.from_config(cfg))
    assert clock is not None and clock.deadline == 3.0 and sorted(clock.profiles) == [0, 1, 2,
                                                                                     3, 4]
    assert clock.profiles == lognormal_profiles(5, seed=9)


def test_reported_values_replace_the_drawn_ones_key_by_key():
    clock = Clock({0: P, 1: P}, seed=0)
    clock.report(0, {"compute-sps": 10.0, "down-bps": 1e6, "other": 3.0})
    assert clock.profiles[0] == DeviceProfile(10.0, 1e6, 1e6) and clock.profiles[1] == P
    assert reported_profile({"partition-id": 0, "up-bps": 2e6, "availability": 0.5}) == {
        "up-bps": 2e6, "availability": 0.5}
    assert reported_profile({"partition-id": 0}) == {}
    with pytest.raises(DeviceError, match="compute-sps"):
        reported_profile({"compute-sps": "fast"})
    with pytest.raises(DeviceError, match="availability"):
        reported_profile({"availability": 1.5})


@pytest.mark.parametrize("kwargs, fragment", [
    ({"compute_sps": 0.0}, "compute-sps"),
    ({"up_bps": -1.0}, "up-bps"),
    ({"down_bps": float("nan")}, "down-bps"),
    ({"availability": 0.0}, "availability"),
    ({"dropout": 1.0}, "dropout"),
])
def test_invalid_profiles_are_refused(kwargs, fragment):
    with pytest.raises(DeviceError, match=fragment):
        DeviceProfile(**{"compute_sps": 1.0, "up_bps": 1.0, "down_bps": 1.0, **kwargs})
