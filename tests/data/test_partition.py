"""Partitioning and local splits (fedpers.data.partition): pure index arithmetic."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpers.data.base import DataSpec
from fedpers.data.partition import (
    SCHEMES,
    cap_indices,
    client_splits,
    partition_indices,
    split_local,
)


def _labels(n: int = 2000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n).astype(np.int64)


def _label_skew(parts: list[np.ndarray], y: np.ndarray) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    classes = np.unique(y)
    glob = np.bincount(y, minlength=len(classes)) / len(y)
    tv = [0.5 * np.abs(np.bincount(y[p], minlength=len(classes)) / len(p) - glob).sum()
          for p in parts]
    return float(np.mean(tv))


def _check_disjoint(parts: list[np.ndarray]) -> np.ndarray:
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx), "a sample is in two partitions"
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0), "indices are sorted and unique"
    return allidx


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partitions_are_disjoint_and_cover_the_data(scheme):
    y = _labels()
    parts = partition_indices(y, 10, scheme, alpha=0.5, classes_per_client=2, seed=3)
    assert len(parts) == 10
    allidx = _check_disjoint(parts)
    # pathological with num_clients >= number of labels also uses every label
    np.testing.assert_array_equal(np.sort(allidx), np.arange(len(y)))
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_partition_different_seed_different(scheme):
    y = _labels()
    a = partition_indices(y, 8, scheme, alpha=0.5, classes_per_client=2, seed=11)
    b = partition_indices(y, 8, scheme, alpha=0.5, classes_per_client=2, seed=11)
    c = partition_indices(y, 8, scheme, alpha=0.5, classes_per_client=2, seed=12)
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa, pb)
    assert any(not np.array_equal(pa, pc) for pa, pc in zip(a, c, strict=True))


def test_iid_sizes_are_balanced_and_label_mix_is_global():
    y = _labels(5000)
    parts = partition_indices(y, 7, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert _label_skew(parts, y) < 0.08


def test_dirichlet_small_alpha_is_more_skewed_than_large_alpha():
    y = _labels(5000)
    skew = {alpha: np.mean([_label_skew(partition_indices(y, 10, "dirichlet", alpha=alpha,
                                                          seed=s), y) for s in range(3)])
            for alpha in (0.1, 1.0, 100.0)}
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[0.1] > 0.5  # most of a client's data from few labels
    assert skew[100.0] < 0.1  # close to IID


@pytest.mark.parametrize("cpc", [1, 2, 3])
def test_pathological_gives_each_client_exactly_classes_per_client_labels(cpc):
    y = _labels()
    parts = partition_indices(y, 12, "pathological", classes_per_client=cpc, seed=5)
    assert [len(np.unique(y[p])) for p in parts] == [cpc] * 12
    _check_disjoint(parts)


def test_pathological_with_few_clients_leaves_unused_labels_out(caplog):
    y = _labels(500, classes=10)
    parts = partition_indices(y, 3, "pathological", classes_per_client=1, seed=0)
    assert sum(len(p) for p in parts) < len(y)
    assert "no client drew" in caplog.text


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"scheme": "natural"}, "'partition'"),
    ({"scheme": "shards"}, "'partition'"),
    ({"num_clients": 5000}, "'num-clients'"),
    ({"num_clients": 0}, "'num-clients'"),
    ({"scheme": "dirichlet", "alpha": 0.0}, "'alpha'"),
    ({"scheme": "pathological", "classes_per_client": 11}, "'classes-per-client'"),
    ({"scheme": "pathological", "classes_per_client": 0}, "'classes-per-client'"),
])
def test_bad_settings_raise_value_error_naming_the_key(kwargs, key):
    args = {"num_clients": 5, "scheme": "iid", "alpha": 0.5, "classes_per_client": 2, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=key):
        partition_indices(_labels(1000), **args)


def test_unsatisfiable_dirichlet_fails_fast_naming_alpha_and_num_clients():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="'alpha'.*'num-clients'"):
        partition_indices(_labels(300), 20, "dirichlet", alpha=0.001, seed=0)
    assert time.perf_counter() - start < 10


def test_pathological_label_needed_by_more_clients_than_samples():
    y = np.array([0] * 50 + [1] * 2, dtype=np.int64)
    with pytest.raises(ValueError, match="'num-clients'.*'classes-per-client'"):
        partition_indices(y, 6, "pathological", classes_per_client=2, seed=0)


def test_labels_must_be_integers():
    with pytest.raises(ValueError, match="integers"):
        partition_indices(np.array([0.5, 1.5, 2.5]), 2, "iid")


# ----------------------------------------------------------------- split_local
def test_split_local_keeps_label_proportions():
    y = _labels(3000, classes=5)
    idx = np.flatnonzero(y != 4)[:1000]
    train, test = split_local(idx, y, 0.2, seed=1)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.sort(idx))
    for c in np.unique(y[idx]):
        n_c = int((y[idx] == c).sum())
        assert abs(int((y[test] == c).sum()) - 0.2 * n_c) <= 0.5
    assert set(np.unique(y[train])) == set(np.unique(y[test])) == set(np.unique(y[idx]))


def test_split_local_single_sample_classes_go_to_train():
    y = np.array([0, 0, 0, 0, 0, 1, 2, 3], dtype=np.int64)
    train, test = split_local(np.arange(8), y, 0.4, seed=0)
    assert {5, 6, 7} <= set(train.tolist())
    assert len(test) == 2 and set(y[test]) == {0}


def test_split_local_never_leaves_test_empty_with_two_samples():
    y = np.array([3, 3], dtype=np.int64)
    train, test = split_local(np.arange(2), y, 0.2, seed=0)
    assert len(train) == len(test) == 1


def test_split_local_is_seeded():
    y = _labels(500)
    a = split_local(np.arange(500), y, 0.3, seed=4)
    b = split_local(np.arange(500), y, 0.3, seed=4)
    c = split_local(np.arange(500), y, 0.3, seed=5)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=80), st.floats(0.05, 0.9),
       st.integers(0, 2**31))
def test_split_local_property(ys, fraction, seed):
    y = np.asarray(ys, dtype=np.int64)
    train, test = split_local(np.arange(len(y)), y, fraction, seed)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(y)))
    assert set(np.unique(y[train])) == set(np.unique(y))  # every label keeps a train sample
    if np.bincount(y).max() >= 2:
        assert len(test) >= 1
    else:  # only single-sample labels: all stay in train
        assert len(test) == 0


# ----------------------------------------------------------------- cap_indices
def test_cap_zero_means_no_cap():
    idx = np.arange(10, 60)
    np.testing.assert_array_equal(cap_indices(idx, _labels(100), 0, seed=0), idx)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=120), st.integers(1, 150),
       st.integers(0, 2**31))
def test_cap_is_exact_stratified_and_a_subset(ys, cap, seed):
    y = np.asarray(ys, dtype=np.int64)
    idx = np.arange(len(y))
    kept = cap_indices(idx, y, cap, seed)
    assert len(kept) == min(cap, len(y))
    assert np.all(np.isin(kept, idx)) and len(np.unique(kept)) == len(kept)
    for c in np.unique(y):
        share = (y == c).sum() * len(kept) / len(y)
        assert abs((y[kept] == c).sum() - share) < 1.0
    np.testing.assert_array_equal(kept, cap_indices(idx, y, cap, seed))


def test_negative_cap_names_the_key():
    with pytest.raises(ValueError, match="'max-samples-per-client'"):
        cap_indices(np.arange(5), _labels(5), -1, 0)


# ----------------------------------------------------------------- client_splits
def _spec(**kw) -> DataSpec:
    base = dict(task="digits", num_clients=6, partition="dirichlet", alpha=0.5,
                classes_per_client=2, local_test_fraction=0.25, max_samples_per_client=0,
                seed=7)
    base.update(kw)
    return DataSpec(**base)


def test_client_splits_are_disjoint_seeded_and_capped():
    y = _labels(1500)
    pairs = client_splits(y, _spec())
    _check_disjoint([i for pair in pairs for i in pair])
    again = client_splits(y, _spec())
    for (a, b), (c, d) in zip(pairs, again, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    capped = client_splits(y, _spec(max_samples_per_client=40))
    assert all(len(a) + len(b) <= 40 for a, b in capped)
    other = client_splits(y, _spec(seed=8))
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(pairs, other, strict=True))


