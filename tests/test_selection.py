"""Seeded client selection."""

import numpy as np
import pytest

from fedpers.selection import SELECTORS


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_selector_is_reproducible_and_valid(name):
    sel = SELECTORS[name]
    cands = list(range(20))
    a = sel.select(3, cands, 5, np.random.default_rng(7))
    b = sel.select(3, cands, 5, np.random.default_rng(7))
    assert a == b
    assert len(a) == len(set(a)) == 5 and set(a) <= set(cands) and a == sorted(a)
    assert sel.select(3, cands, 50, np.random.default_rng(7)) == cands


def test_uniform_covers_all_clients_over_many_draws():
    rng = np.random.default_rng(0)
    counts = np.zeros(10)
    for r in range(2000):
        for c in SELECTORS["uniform"].select(r, list(range(10)), 3, rng):
            counts[c] += 1
    # each client picked with probability 0.3 -> 600 expected, sd ~ 20
    assert np.all(np.abs(counts - 600) < 100)
