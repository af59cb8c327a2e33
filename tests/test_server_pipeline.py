"""The server round as a pipeline of steps (``fedpers.server_pipeline``)."""

from __future__ import annotations

import numpy as np
import pytest

from fedpers.config import parse_run_config
from fedpers.screening import CheckedReply
from fedpers.server_pipeline import (
    DifferentialPrivacy,
    RobustAggregation,
    RoundState,
    Screening,
    Step,
    StrategyAggregation,
    run_pipeline,
)


class _Tracker:
    run_id = "run-1"


def _experiment(**keys):
    from fedpers.server_loop import Experiment

    cfg = parse_run_config({"task": "digits", "num-clients": 4, "seed": 3, **keys})
    return Experiment(cfg, grid=None, tracker=_Tracker())


@pytest.mark.parametrize(("keys", "steps"), [
    ({}, [Screening, RobustAggregation, StrategyAggregation]),
    ({"dp": "client-clipping", "dp-noise-multiplier": 0.5},
     [Screening, RobustAggregation, DifferentialPrivacy, StrategyAggregation]),
])
def test_the_pipeline_is_assembled_in_order(keys, steps):
    assert [type(s) for s in _experiment(**keys).pipeline] == steps


def _state() -> RoundState:
    return RoundState(rnd=2, reference={"w": np.zeros(2, np.float32)}, replies=[],
                      selected=3, sent=3)


class _Add(Step):
    """Adds ``delta`` to every update; logs how many it saw."""

    def __init__(self, name: str, delta: float, halt: bool = False) -> None:
        self.name, self.delta, self.halt = name, delta, halt

    def apply(self, state, updates):
        if not updates:  # the first step makes the updates
            updates = [CheckedReply(p, {"w": np.full(2, float(p), np.float32)}, {})
                       for p in range(3)]
        out = [CheckedReply(c.partition_id, {"w": c.arrays["w"] + self.delta}, c.metrics)
               for c in updates]
        state.halted = self.halt
        return out, {f"{self.name}/seen": float(len(updates))}

    def close(self, state):
        return {f"{self.name}/closed": 1.0}


class _Collect(Step):
    def apply(self, state, updates):
        state.global_arrays = {"w": np.mean([c.arrays["w"] for c in updates], axis=0)}
        return updates, {"collect/seen": float(len(updates))}


def test_each_step_gets_the_updates_of_the_one_before_and_adds_its_metrics():
    state = _state()
    metrics = run_pipeline([_Add("a", 1.0), _Add("b", 10.0), _Collect()], state)
    # (0 + 1 + 2) / 3 + 1 + 10 = 12
    np.testing.assert_array_equal(state.global_arrays["w"], [12.0, 12.0])
    assert metrics == {"a/seen": 3.0, "b/seen": 3.0, "collect/seen": 3.0,
                       "a/closed": 1.0, "b/closed": 1.0}
    assert list(metrics) == ["a/seen", "b/seen", "collect/seen", "a/closed", "b/closed"]


def test_a_halting_step_stops_the_steps_after_it_but_every_close_runs():
    state = _state()
    metrics = run_pipeline([_Add("a", 1.0, halt=True), _Collect()], state)
    assert state.global_arrays is None and "collect/seen" not in metrics
    assert metrics["a/closed"] == 1.0


def test_dp_logs_its_budget_every_round_even_without_aggregation():
    exp = _experiment(**{"dp": "client-clipping", "dp-noise-multiplier": 0.5})
    dp = next(s for s in exp.pipeline if isinstance(s, DifferentialPrivacy))
    state = _state()
    state.releases_before, state.halted = 2, True
    assert dp.close(state) == exp.privacy.metrics(2)
    state.aggregated = True
    assert dp.close(state)["privacy/releases"] == 3.0
