"""One conformance suite run against every ``STRATEGIES`` entry.

Each case drives the strategy the way the round loop does: ``configure_train`` with
the whole global model on a grid that shows the selected nodes, then
``aggregate_train`` with checked replies that carry only the shared part of the
model (plus the strategy's declared extra records).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, MessageType
from flwr.serverapp.strategy import Strategy
from strategy_helpers import (
    FakeGrid,
    numpy,
    record,
    reply,
)

from clients import LOCAL_UPDATES
from fedpers.config import parse_run_config
from strategies import STRATEGIES

pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app

NAMES = sorted(STRATEGIES)
# Adaptive server optimisers (Reddi et al.) take a normalised step towards the
# replies instead of landing on their average.
MOVES_TOWARDS_ONLY = {"fedadam", "fedyogi"}

RNG = np.random.default_rng(0)
GLOBAL = {"body.weight": RNG.normal(size=(4, 3)).astype(np.float32),
          "body.bias": RNG.normal(size=4).astype(np.float32),
          "head.weight": RNG.normal(size=(2, 4)).astype(np.float32),
          "head.bias": RNG.normal(size=2).astype(np.float32)}
SHARED = ("body.weight", "body.bias")  # e.g. a personaliser keeps the head private


def _build(name: str):
    return STRATEGIES[name].build(parse_run_config({"strategy": name, "num-clients": 5}))


def _replies(name: str, models: list[dict[str, np.ndarray]], steps: int = 4) -> list:
    extra_names = STRATEGIES[name].extra_records
    return [reply(m, num_examples=10 * (i + 1), steps=steps,
                  extra={e: {k: np.zeros_like(v) for k, v in m.items()} for e in extra_names})
            for i, m in enumerate(models)]


def _round(strategy, name: str, rnd: int, global_arrays: dict, models: list) -> dict:
    messages = list(strategy.configure_train(rnd, record(global_arrays), ConfigRecord(),
                                             FakeGrid(list(range(1, len(models) + 1)))))
    assert len(messages) == len(models)
    assert all(m.metadata.message_type == MessageType.TRAIN for m in messages)
    arrays, _ = strategy.aggregate_train(rnd, _replies(name, models))
    assert arrays is not None
    return numpy(arrays)


def test_the_registry_is_complete_and_moves_towards_only_names_real_entries():
    assert {"fedavg", "fedprox", "scaffold", "fednova", "fedadam", "fedyogi",
            "fedavgm"} <= set(STRATEGIES)
    assert MOVES_TOWARDS_ONLY <= set(STRATEGIES)


@pytest.mark.parametrize("name", NAMES)
def test_entry_builds_a_strategy_with_a_known_client_half(name):
    spec = STRATEGIES[name]
    assert isinstance(_build(name), Strategy)
    assert spec.local_update in LOCAL_UPDATES
    assert spec.paper.startswith("arXiv ")


@pytest.mark.parametrize("shared", [tuple(GLOBAL), SHARED], ids=["whole-model", "shared-part"])
@pytest.mark.parametrize("name", NAMES)
def test_aggregation_keeps_the_shared_keys_and_shapes_over_rounds(name, shared):
    strategy = _build(name)
    global_arrays = {k: v.copy() for k, v in GLOBAL.items()}
    for rnd in (1, 2, 3):
        models = [{k: global_arrays[k] + RNG.normal(size=global_arrays[k].shape)
                   .astype(np.float32) for k in shared} for _ in range(3)]
        out = _round(strategy, name, rnd, global_arrays, models)
        assert list(out) == list(shared)
        for k, v in out.items():
            assert v.shape == GLOBAL[k].shape and np.isfinite(v).all(), k
            global_arrays[k] = v.astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_replies_that_change_nothing_leave_the_model_unchanged(name):
    strategy = _build(name)
    shared = {k: GLOBAL[k] for k in SHARED}
    out = _round(strategy, name, 1, GLOBAL, [dict(shared), dict(shared)])
    for k in SHARED:
        np.testing.assert_allclose(out[k], GLOBAL[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_identical_replies_are_returned(name):
    strategy = _build(name)
    target = {k: GLOBAL[k] + np.float32(0.25) for k in SHARED}
    out = _round(strategy, name, 1, GLOBAL, [dict(target), dict(target), dict(target)])
    for k in SHARED:
        if name in MOVES_TOWARDS_ONLY:
            step = out[k] - GLOBAL[k]
            assert (step > 0).all() and (step <= 0.25 + 1e-6).all(), k
        else:
            np.testing.assert_allclose(out[k], target[k], rtol=1e-5, atol=1e-6)
