"""Contract tests of the server components' explicit state (``fedpers.state``).

Every registered strategy, selector, aggregator and dp mode is built and either
declared stateless or round-trips its state through a checkpoint file: build,
mutate, ``state_dict`` -> file -> ``load_state_dict`` into a fresh one -> equal. A
component that keeps state without the two methods fails the check, and so does a
round loop that is given one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from fedpers.aggregation import AGGREGATORS, AggregationParams
from fedpers.byte_count import ByteCounter
from fedpers.checkpoint import Checkpoint, decode, encode
from fedpers.config import parse_run_config
from fedpers.privacy import DP_MODES, DpParams
from fedpers.selection import SELECTORS, ClientStats, SelectionParams
from fedpers.state import (
    StateError,
    collect,
    flatten,
    is_stateless,
    require_state_protocol,
    restore,
    unflatten,
)
from strategies import STRATEGIES


def _through_a_file(states: dict) -> dict:
    return decode(encode(Checkpoint.of_states(3, {}, states))).states()


def _equal(a, b) -> None:
    flat_a, arrays_a = flatten(a)
    flat_b, arrays_b = flatten(b)
    assert flat_a == flat_b
    assert list(arrays_a) == list(arrays_b)
    for k in arrays_a:
        assert arrays_a[k].dtype == arrays_b[k].dtype
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k])


# ------------------------------------------------------------------ the check itself
class _Counter:
    """Keeps a count between rounds, and no state methods."""

    def __init__(self) -> None:
        self.count = 0


class _HalfStateful:
    def state_dict(self) -> dict:
        return {}


@dataclass
class _MutableRecord:
    seen: int = 0


def test_a_component_with_state_but_no_state_dict_fails_the_check():
    with pytest.raises(StateError, match=r"'counter' \(_Counter\) has no state_dict"):
        require_state_protocol("counter", _Counter())
    with pytest.raises(StateError, match="has no state_dict"):
        require_state_protocol("record", _MutableRecord())  # a mutable dataclass counts
    with pytest.raises(StateError, match="state_dict but not its pair"):
        require_state_protocol("half", _HalfStateful())
    with pytest.raises(StateError, match="'counter'"):
        collect({"bytes": ByteCounter(), "counter": _Counter()})


def test_declared_stateless_components_pass_and_store_nothing():
    @dataclass(frozen=True)
    class Frozen:
        k: int = 1

    class Declared:
        stateless = True

    for c in (Frozen(), Declared(), None):
        require_state_protocol("c", c)
        assert is_stateless(c)
    assert collect({"a": Frozen(), "b": Declared(), "c": None}) == {}


def test_restore_names_a_component_whose_state_is_missing():
    with pytest.raises(StateError, match=r"no state of component 'bytes'"):
        restore({"bytes": ByteCounter()}, {"other": {}})


def test_flatten_keeps_order_kinds_and_dtypes():
    state = {"z": [np.arange(3, dtype=np.int16), {"b": 1.5, "a": None}],
             "a": {"w": np.float32(2.0), "names": ["x", "y"]}}
    meta, arrays = flatten(state, "s")
    assert list(arrays) == ["s/z/0"]
    back = unflatten(meta, arrays)
    assert list(back) == ["z", "a"] and list(back["z"][1]) == ["b", "a"]
    assert back["z"][0].dtype == np.int16 and back["a"]["w"] == 2.0
    with pytest.raises(StateError, match=r"at 'bad' is a set"):
        flatten({"bad": {1, 2}})


# ------------------------------------------------------------------ every registry
def _strategy(name: str):
    return STRATEGIES[name].build(parse_run_config({"strategy": name, "num-clients": 3}))


def _mutate_strategy(strat) -> None:
    rng = np.random.default_rng(1)
    for attr in strat.state_attrs:
        if attr == "momentum_vector":
            setattr(strat, attr, [rng.standard_normal((2, 3)).astype(np.float32)])
        else:
            setattr(strat, attr, {"w": rng.standard_normal((2, 3)).astype(np.float32),
                                  "b": rng.standard_normal(3)})


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_round_trips_its_state_or_is_stateless(name):
    strat = _strategy(name)
    require_state_protocol(name, strat)
    if is_stateless(strat):
        assert collect({name: strat}) == {}
        return
    before = strat.state_dict()
    _mutate_strategy(strat)
    assert flatten(strat.state_dict())[1], "the mutation changed no array"
    fresh = _strategy(name)
    restore({name: fresh}, _through_a_file(collect({name: strat})))
    _equal(fresh.state_dict(), strat.state_dict())
    with pytest.raises(AssertionError):  # the round trip is not vacuous
        _equal(before, strat.state_dict())


@pytest.mark.parametrize("name", list(SELECTORS))
def test_every_selector_is_stateless_its_statistics_round_trip(name):
    params = SelectionParams(selection=name, pow_d=0, round_deadline=10.0)
    selector = SELECTORS.build(name, params)
    require_state_protocol(name, selector)
    assert is_stateless(selector)  # what it reads is ClientStats, checkpointed below
    stats = ClientStats()
    stats.note_selected(2, [0, 3])
    stats[3].last_loss = 0.25
    stats[3].expected_s = 1.5
    fresh = ClientStats()
    restore({"stats": fresh}, _through_a_file(collect({"stats": stats})))
    assert fresh == stats
    rng_a, rng_b = np.random.default_rng(4), np.random.default_rng(4)
    assert (selector.select(3, [0, 1, 2, 3], 2, rng_a, stats)
            == selector.select(3, [0, 1, 2, 3], 2, rng_b, fresh))


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_every_aggregator_is_stateless(name):
    params = dataclasses.replace(AggregationParams.from_config(parse_run_config({})),
                                 aggregation=name)
    agg = AGGREGATORS.build(name, params)
    require_state_protocol(name, agg)
    assert is_stateless(agg) and collect({name: agg}) == {}


@pytest.mark.parametrize("name", list(DP_MODES))
def test_every_dp_mode_is_stateless(name):
    params = DpParams(dp=name, dp_clip_norm=1.0, dp_noise_multiplier=1.0, dp_delta=1e-5,
                      seed=0)
    server = DP_MODES.build(name, params)
    require_state_protocol(name, server)
    assert is_stateless(server)


def test_byte_counter_keeps_its_totals_not_the_round():
    counter = ByteCounter()
    counter.add_up(7)
    counter.add_down(11)
    fresh = ByteCounter()
    restore({"bytes": fresh}, _through_a_file(collect({"bytes": counter})))
    assert (fresh.up_total, fresh.down_total, fresh.up, fresh.down) == (7, 11, 0, 0)


# ------------------------------------------------------------------ the round loop
class _Tracker:
    run_id = "run-1"


def _experiment(**keys):
    from fedpers.server_loop import Experiment

    cfg = parse_run_config({"task": "digits", "num-clients": 4, "seed": 3, **keys})
    return Experiment(cfg, grid=None, tracker=_Tracker())


@pytest.mark.parametrize("keys", [
    {"strategy": "fedadam", "device-profile": "lognormal", "selection": "oort"},
    {"dp": "client-clipping", "dp-noise-multiplier": 0.5},
])
def test_a_checkpoint_walks_every_component_of_the_round_loop(keys):
    exp = _experiment(**keys)
    assert {"strategy", "selector", "aggregator", "participation", "bytes",
            "reject_reasons"} <= set(exp.components())
    exp.bytes.add_up(123)
    exp.reject_reasons.metrics({"norm": 1, "keys": 0})
    exp.participation.stats.note_selected(1, [0, 2])
    exp.participation.stats[2].last_loss = 0.5
    if exp.participation.clock is not None:
        exp.participation.clock.total_s = 12.5
        exp.participation.clock.last_bytes = {2: (100, 50)}
    exp.global_arrays = {k: v + 1 if v.dtype.kind == "f" else v
                         for k, v in exp.global_arrays.items()}
    exp.threshold, exp.aggregated = 0.125, 4
    if hasattr(exp.strategy, "state_attrs"):
        _mutate_strategy(exp.strategy)
    ckpt = decode(encode(exp._snapshot(5, {"0": {"sha256": "x", "bytes": 1}})))

    fresh = _experiment(**keys)
    restore(fresh.checkpoint_components(), ckpt.states())
    _equal(collect(fresh.checkpoint_components()), collect(exp.checkpoint_components()))
    assert fresh.reject_reasons.seen == {"norm"} and fresh.bytes.up_total == 123
    assert fresh.aggregated == 4 and fresh.participation.stats[2].last_loss == 0.5


def test_the_round_loop_refuses_a_component_without_state_methods(monkeypatch):
    from fedpers.server_loop import Experiment

    original = Experiment.components
    monkeypatch.setattr(Experiment, "components",
                        lambda self: {**original(self), "counter": _Counter()})
    with pytest.raises(StateError, match="'counter'"):
        _experiment()
