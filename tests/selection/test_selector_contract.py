"""Every selector: seeded, valid; and what each one promises (pow-d, deadline, oort)."""

from __future__ import annotations

import numpy as np
import pytest

from fedpers.config import ConfigError, config_keys, parse_run_config
from fedpers.selection import SELECTORS, ClientStats, build_selector, jain_index
from fedpers.selection.deadline import DeadlineSelector
from fedpers.selection.oort import OortSelector
from fedpers.selection.pow_d import PowerOfChoice

DEADLINE = 10.0


def configured(name: str):
    return build_selector(parse_run_config({"selection": name, "device-profile": "lognormal",
                                            "round-deadline": DEADLINE}))


def mixed_stats(n: int, seed: int = 0) -> ClientStats:
    """Half the clients seen (losses, durations, selection history), half not;
    predicted round times from 1 to 20 s (about half fit the deadline)."""
    rng = np.random.default_rng(seed)
    stats = ClientStats()
    for p in range(n):
        rec = stats[p]
        rec.num_examples = int(rng.integers(10, 500))
        rec.expected_s = float(rng.uniform(1, 20))
        if p % 2:
            rec.last_loss = float(rng.uniform(0.1, 3))
            rec.last_duration_s = rec.expected_s
            rec.times_selected = int(rng.integers(1, 4))
            rec.last_round = int(rng.integers(1, 5))
    return stats


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize("rnd", [1, 5, 40])
def test_every_selector_is_reproducible_from_the_seed_and_valid(name, rnd):
    sel = configured(name)
    stats = mixed_stats(40)
    cands = [p for p in range(40) if p % 7]  # some offline
    picks = [sel.select(rnd, cands, 8, np.random.default_rng(s), stats) for s in (3, 3, 4)]
    assert picks[0] == picks[1]
    for pick in picks:
        assert pick == sorted(set(pick)) and set(pick) <= set(cands) and len(pick) <= 8
    if name != "deadline":  # deadline may pick fewer: only those that fit
        assert len(picks[0]) == 8
    # different seeds give different picks over a few tries
    assert len({tuple(sel.select(rnd, cands, 8, np.random.default_rng(s), stats))
                for s in range(6)}) > 1
    # the stats are only read
    assert stats == mixed_stats(40)


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_handles_tiny_pools(name):
    sel = configured(name)
    stats = ClientStats()
    for p in range(3):
        stats[p].expected_s = 1.0
    assert sel.select(1, [], 4, np.random.default_rng(0), stats) == []
    assert sel.select(1, [0, 1, 2], 5, np.random.default_rng(0), stats) == [0, 1, 2]


def test_deadline_never_picks_a_client_that_cannot_finish_in_time():
    sel = DeadlineSelector(deadline_s=DEADLINE)
    for seed in range(50):
        stats = mixed_stats(30, seed)
        stats[0].expected_s = None  # no prediction: never picked
        rng = np.random.default_rng(seed)
        num = int(rng.integers(1, 30))
        pick = sel.select(seed + 1, range(30), num, rng, stats)
        assert all(stats.get(p).expected_s is not None
                   and stats.get(p).expected_s <= DEADLINE for p in pick)
        fits = [p for p in range(30) if sel.fits(stats.get(p).expected_s)]
        assert len(pick) == min(len(fits), num)  # as many as fit, up to the round size
    # as many as fit, up to the round size
    stats = ClientStats()
    for p, t in enumerate([1.0, 11.0, 9.9, 10.0, 30.0]):
        stats[p].expected_s = t
    assert sel.select(1, range(5), 10, np.random.default_rng(0), stats) == [0, 2, 3]
    assert len(sel.select(1, range(5), 2, np.random.default_rng(0), stats)) == 2
    with pytest.raises(ValueError, match="round-deadline"):
        DeadlineSelector().select(1, range(5), 2, np.random.default_rng(0), stats)


def test_pow_d_keeps_the_highest_losses_of_its_d_candidates():
    stats = ClientStats()
    for p in range(10):
        stats[p].last_loss = float(p)
    # d = all candidates: the top losses, whatever the seed
    assert PowerOfChoice(d=10).select(1, range(10), 3, np.random.default_rng(0),
                                      stats) == [7, 8, 9]
    # default d = 2 x 3 = 6 candidates: the 3 highest of a random 6
    for seed in range(20):
        rng = np.random.default_rng(seed)
        sample = sorted(int(p) for p in np.random.default_rng(seed).choice(
            np.arange(10), size=6, replace=False))
        assert PowerOfChoice().select(1, range(10), 3, rng, stats) == sample[-3:]
    # clients never seen rank first
    stats.clients.pop(2)
    assert 2 in PowerOfChoice(d=10).select(1, range(10), 3, np.random.default_rng(0), stats)
    # d smaller than the round size: the round size
    assert len(PowerOfChoice(d=1).select(1, range(10), 3, np.random.default_rng(0),
                                         stats)) == 3


def test_oort_explores_clients_it_has_not_seen():
    sel = OortSelector()
    stats = ClientStats()
    for p in range(20):  # 0..9 seen with high utility, 10..19 never seen
        stats[p].num_examples = 100
        if p < 10:
            stats[p].last_loss = 5.0
            stats[p].last_round = 1
            stats[p].times_selected = 1
    explored = set()
    for rnd in range(2, 40):
        pick = sel.select(rnd, range(20), 5, np.random.default_rng(rnd), stats)
        unseen = [p for p in pick if not stats.seen(p)]
        share = sel.explore_share(rnd)
        # its exploration share of the slots goes to unseen clients
        assert len(unseen) == 5 - int(5 * (1 - share)), (rnd, pick)
        explored |= set(unseen)
    assert explored == set(range(10, 20))  # every unseen client gets tried
    assert sel.explore_share(1) == pytest.approx(0.9 * 0.98)
    assert sel.explore_share(1000) == 0.3
    # nothing left to explore: every slot is exploitation
    for p in range(10, 20):
        stats[p].last_loss = 1.0
    assert len(sel.select(50, range(20), 5, np.random.default_rng(0), stats)) == 5


def test_a_client_that_never_delivers_is_not_retried_first_forever():
    stats = ClientStats()
    for p in range(6):
        stats[p].last_loss = 1.0 + p / 10  # 1.0 .. 1.5, mean 1.25
        stats[p].num_examples = 100
        stats[p].last_round = 1
        stats[p].expected_s = stats[p].last_duration_s = 1.0
    stats[6].times_selected = stats[6].last_round = 1  # selected, missed the deadline
    stats[6].expected_s = stats[6].last_duration_s = 40.0
    stats[6].num_examples = 100
    # pow-d: ranked by the mean loss, not first; a client never selected is first
    assert PowerOfChoice(d=8).select(2, range(8), 3, np.random.default_rng(0),
                                     stats) == [4, 5, 7]
    # oort: tried (it has a duration), so no exploration slot, and its 40 s penalise it
    sel = OortSelector(preferred_s=10.0)
    assert stats.tried(6) and not stats.seen(6)
    util = sel.utilities(2, list(range(7)), stats, 10.0)
    assert util[6] < min(util[p] for p in range(6) if p != 0)
    picks = [sel.select(r, range(7), 3, np.random.default_rng(r), stats) for r in range(100, 150)]
    assert sum(6 in pick for pick in picks) < 5


def test_oort_prefers_high_loss_fast_clients_and_penalises_slow_ones():
    sel = OortSelector(preferred_s=10.0)
    stats = ClientStats()
    for p in range(30):
        rec = stats[p]
        rec.num_examples = 100
        rec.last_loss = 3.0 if p < 10 else 0.1  # 0..9: high loss
        rec.last_round = 9
        rec.expected_s = rec.last_duration_s = 5.0 if p < 5 or p >= 10 else 40.0  # 5..9 slow
    util = sel.utilities(10, list(range(30)), stats, 10.0)
    assert util[0] > util[5] > 0 and util[5] == pytest.approx(util[0] * (10 / 40) ** 2)
    counts = np.zeros(30)
    for rnd in range(100, 200):  # exploration share at its minimum, nothing unseen
        for p in sel.select(rnd, range(30), 5, np.random.default_rng(rnd), stats):
            counts[p] += 1
    assert counts[:5].sum() > 0.9 * counts.sum()  # fast and useful: nearly always
    assert counts[5:10].sum() < counts[:5].sum() / 10


def test_oort_staleness_bonus_grows_with_time_since_selected():
    sel = OortSelector()
    stats = ClientStats()
    for p, last in ((0, 1), (1, 50)):
        stats[p].num_examples = 10
        stats[p].last_loss = 1.0
        stats[p].last_round = last
    util = sel.utilities(60, [0, 1], stats, None)
    assert util[0] > util[1]
    assert util[0] == pytest.approx(np.sqrt(0.1 * np.log(60) / 1))


@pytest.mark.parametrize("counts, expected", [
    ([3, 3, 3, 3], 1.0),
    ([1, 0, 0, 0], 0.25),
    ([2, 1, 1], 16 / 18),
    ([5, 0], 0.5),
    ([0, 0, 0], 1.0),
    ([], 1.0),
])
def test_jain_index_on_known_counts(counts, expected):
    assert jain_index(counts) == pytest.approx(expected)


def test_new_keys_are_declared_and_checked():
    keys = config_keys()
    assert {k: keys[k] for k in ("device-profile", "device-trace", "round-deadline",
                                 "device-availability", "device-dropout", "pow-d")} == {
        "device-profile": "none", "device-trace": "", "round-deadline": 0.0,
        "device-availability": 1.0, "device-dropout": 0.0, "pow-d": 0}
    # declared together, in this order (later issues append their keys after them)
    names = list(keys)
    start = names.index("device-profile")
    assert names[start:start + 6] == ["device-profile", "device-trace", "round-deadline",
                                      "device-availability", "device-dropout", "pow-d"]
    assert configured("pow-d") == PowerOfChoice(d=0)
    assert build_selector(parse_run_config({"selection": "pow-d", "pow-d": 7})).d == 7
    assert configured("oort").preferred_s == DEADLINE
    assert configured("deadline").deadline_s == DEADLINE


@pytest.mark.parametrize("raw, fragment", [
    ({"device-profile": "phones"}, "'device-profile' = 'phones': must be one of none"),
    ({"device-profile": "trace"}, "'device-trace' must name a CSV"),
    ({"device-trace": "t.csv"}, "set device-profile = 'trace'"),
    ({"round-deadline": 5.0}, "'round-deadline' = 5.0 needs the simulated clock"),
    ({"device-dropout": 0.1}, "'device-dropout' = 0.1 needs the simulated clock"),
    ({"device-availability": 0.5}, "'device-availability' = 0.5 needs the simulated clock"),
    ({"device-profile": "lognormal", "round-deadline": -1.0}, "'round-deadline' = -1.0"),
    ({"device-profile": "lognormal", "device-availability": 0.0}, "'device-availability'"),
    ({"device-profile": "lognormal", "device-dropout": 1.0}, "'device-dropout' = 1.0"),
    ({"device-profile": "trace", "device-trace": "t.csv", "device-availability": 0.5},
     "a trace gives each client's availability"),
    ({"selection": "deadline", "device-profile": "lognormal"}, "needs 'round-deadline' > 0"),
    ({"pow-d": 4}, "'pow-d' = 4 applies to selection 'pow-d'"),
    ({"selection": "pow-d", "pow-d": -1}, "'pow-d' = -1"),
])
def test_bad_device_and_selection_settings_name_the_key(raw, fragment):
    with pytest.raises(ConfigError) as err:
        parse_run_config(raw)
    assert fragment in str(err.value)
