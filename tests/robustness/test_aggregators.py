"""Golden numbers for every robust aggregator and for clipping, on hand-made updates."""

from __future__ import annotations

import numpy as np
import pytest

from fedpers.aggregation import (
    AGGREGATORS,
    Krum,
    Mean,
    Median,
    MultiKrum,
    TrimmedMean,
    build_aggregator,
    clip_updates,
    krum_scores,
    min_clients,
)
from fedpers.config import parse_run_config

# five 2-D updates: four close together, one far away (hand-computed distances below)
#   a=(0,0) b=(1,0) c=(0,1) d=(2,2) e=(10,0)
#   |a-b|^2=1 |a-c|^2=1 |a-d|^2=8 |a-e|^2=100 |b-c|^2=2 |b-d|^2=5 |b-e|^2=81
#   |c-d|^2=5 |c-e|^2=101 |d-e|^2=68
FIVE = np.array([[0, 0], [1, 0], [0, 1], [2, 2], [10, 0]], dtype=float)


def test_mean_passes_everything_unchanged():
    agg = Mean().aggregate(FIVE)
    assert agg.selected == (0, 1, 2, 3, 4) and agg.update is None


def test_median_odd_and_even():
    u = np.array([[1, 10], [2, -4], [100, 0]], dtype=float)
    agg = Median().aggregate(u)
    np.testing.assert_array_equal(agg.update, [2, 0])
    assert agg.selected == (0, 1, 2)
    even = np.array([[1], [3], [5], [100]], dtype=float)
    np.testing.assert_array_equal(Median().aggregate(even).update, [4])  # (3 + 5) / 2


def test_trimmed_mean_golden():
    u = np.array([[1, 0], [3, -8], [5, 2], [100, 6]], dtype=float)
    # beta = 0.25, n = 4: k = 1 per side -> mean of the middle two of each column
    np.testing.assert_array_equal(TrimmedMean(0.25).aggregate(u).update, [4, 1])
    # beta = 0.1: k = floor(0.4) = 0 -> the plain mean
    np.testing.assert_array_equal(TrimmedMean(0.1).aggregate(u).update, [27.25, 0])
    # beta = 0.4, n = 5: k = 2 -> the median
    np.testing.assert_array_equal(TrimmedMean(0.4).aggregate(FIVE).update, [1, 0])
    # n = 2, beta = 0.45: k = floor(0.9) = 0 (never trims everything)
    np.testing.assert_array_equal(TrimmedMean(0.45).aggregate(FIVE[:2]).update, [0.5, 0])


def test_trimmed_mean_never_trims_all_values():
    u = np.array([[1.0], [2.0], [9.0]])
    # beta = 0.49, n = 3: floor(1.47) = 1, within (n - 1) // 2 = 1 -> middle value
    np.testing.assert_array_equal(TrimmedMean(0.49).aggregate(u).update, [2.0])
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(0.5)


def test_krum_scores_and_choice_1d():
    u = np.array([[0.0], [1.0], [2.0], [10.0]])
    # f = 0: n - f - 2 = 2 nearest neighbours: 0 -> 1+4, 1 -> 1+1, 2 -> 1+4, 10 -> 64+81
    np.testing.assert_allclose(krum_scores(u, 0), [5, 2, 5, 145])
    assert Krum(f=0).aggregate(u).selected == (1,)


def test_krum_and_multi_krum_2d():
    # f = 1, n = 5: 2 nearest neighbours each
    np.testing.assert_allclose(krum_scores(FIVE, 1), [2, 3, 3, 10, 149])
    assert Krum(f=1).aggregate(FIVE).selected == (0,)
    assert MultiKrum(f=1, m=3).aggregate(FIVE).selected == (0, 1, 2)
    assert MultiKrum(f=1, m=0).aggregate(FIVE).selected == (0, 1, 2, 3)  # m = n - f
    assert MultiKrum(f=1, m=9).aggregate(FIVE).selected == (0, 1, 2, 3, 4)  # capped at n
    assert Krum(f=1).aggregate(FIVE).update is None  # selection: updates go on unchanged


def test_krum_ties_take_the_lowest_index_and_one_update_is_kept():
    same = np.ones((4, 3))
    assert Krum(f=1).aggregate(same).selected == (0,)
    assert Krum(f=3).aggregate(np.array([[5.0, 1.0]])).selected == (0,)
    assert min_clients(2) == 7


def test_krum_rejects_the_outlier_the_mean_follows():
    rng = np.random.default_rng(0)
    honest = rng.normal(0, 0.1, size=(7, 20))
    attack = np.full((2, 20), 50.0)
    u = np.vstack([honest, attack])
    assert set(MultiKrum(f=2, m=0).aggregate(u).selected) <= set(range(7))
    assert Krum(f=2).aggregate(u).selected[0] < 7
    assert np.abs(Median().aggregate(u).update).max() < 0.5


def test_clipping_golden():
    u = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped, mask = clip_updates(u, 1.0)
    np.testing.assert_allclose(clipped, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    assert mask.tolist() == [True, False, False]
    np.testing.assert_array_equal(u[0], [3.0, 4.0])  # the input is not modified
    with pytest.raises(ValueError, match="bound"):
        clip_updates(u, 0.0)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_registry_builds_from_config_and_keeps_shapes(name):
    cfg = parse_run_config({"aggregation": name, "num-clients": 10, "krum-f": 1,
                            "trim-fraction": 0.2, "multi-krum-m": 3})
    agg = build_aggregator(cfg)
    assert agg.name == name
    out = agg.aggregate(FIVE)
    assert all(0 <= i < 5 for i in out.selected) and list(out.selected) == sorted(out.selected)
    if out.update is not None:
        assert out.update.shape == (2,)
    # with every update equal, every rule returns that update (or passes it through)
    same = np.tile([1.5, -2.0], (5, 1))
    res = agg.aggregate(same)
    rows = same[list(res.selected)] if res.update is None else res.update[None]
    np.testing.assert_allclose(rows, np.tile([1.5, -2.0], (len(rows), 1)))
