"""Seeded client selection."""

import numpy as np
import pytest

from fedpers.config import parse_run_config
from fedpers.selection import SELECTORS, ClientStats, build_selector


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_selector_is_reproducible_and_valid(name):
    # every client fits a 10 s deadline (selection=deadline needs one); more contract
    # tests over SELECTORS: tests/selection/test_selector_contract.py
    sel = build_selector(parse_run_config(
        {"selection": name, "device-profile": "lognormal", "round-deadline": 10.0}))
    cands = list(range(20))
    stats = ClientStats()
    for p in cands:
        stats[p].expected_s = 1.0 + p / 10
    a = sel.select(3, cands, 5, np.random.default_rng(7), stats)
    b = sel.select(3, cands, 5, np.random.default_rng(7), stats)
    assert a == b
    assert len(a) == len(set(a)) == 5 and set(a) <= set(cands) and a == sorted(a)
    assert sel.select(3, cands, 50, np.random.default_rng(7), stats) == cands


def test_uniform_covers_all_clients_over_many_draws():
    rng = np.random.default_rng(0)
    counts = np.zeros(10)
    for r in range(2000):
        for c in SELECTORS["uniform"].select(r, list(range(10)), 3, rng):
            counts[c] += 1
    # each client picked with probability 0.3 -> 600 expected, sd ~ 20
    assert np.all(np.abs(counts - 600) < 100)
