"""The robust layer composed with the real strategies: what each combination hands the
strategy, and what the strategy then computes, on tiny hand-made updates."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedpers.arrays import record_to_numpy, to_array_record
from fedpers.config import parse_run_config
from fedpers.robust import RobustLayer
from fedpers.screening import CheckedReply, clean_reply
from strategies import STRATEGIES, StrategyParams

# the global model: two float parameters, one integer buffer, one private parameter
X = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.5], np.float32),
     "n": np.array(3, np.int64), "head": np.array([9.0], np.float32)}
# three client updates of (w, b): two honest, one far off
U = [([0.1, 0.2], [0.0]), ([0.3, 0.0], [0.2]), ([50.0, -40.0], [30.0])]


pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


def _checked(updates=U, examples=(10, 30, 60), steps=(5, 5, 5), extra=None):
    out = []
    for i, ((w, b), n, k) in enumerate(zip(updates, examples, steps, strict=True)):
        arrays = {"w": X["w"] + np.float32(w), "b": X["b"] + np.float32(b),
                  "n": np.array(3 + i, np.int64)}
        out.append(CheckedReply(i, arrays, {"num-examples": n, "train-loss": 0.1, "steps": k},
                                {} if extra is None else {"control": extra[i]}))
    return out


def _aggregate(strategy_name, checked, cfg_extra=None, rounds=1):
    """(global after the strategy, the strategy) with the layer of ``cfg_extra``."""
    cfg = parse_run_config({"strategy": strategy_name, "num-clients": 4, **(cfg_extra or {})})
    spec = STRATEGIES[strategy_name]
    strategy = spec.build(StrategyParams.from_config(cfg))
    layer = RobustLayer(cfg, spec.normalises_steps)
    msgs = list(strategy.configure_train(1, to_array_record(X), ConfigRecord(), _Grid()))
    outcome = layer.apply(checked, X)
    replies = [clean_reply(Message(RecordDict(), reply_to=msgs[i]), c) for i, c in outcome.passed]
    arrays, _ = strategy.aggregate_train(1, replies)
    return record_to_numpy(arrays), strategy, outcome


def _reference(strategy_name, checked, cfg_extra=None):
    """The strategy alone (no layer) on the given replies."""
    return _aggregate(strategy_name, checked, {"aggregation": "mean", **(cfg_extra or {})})


def test_mean_without_clipping_is_the_strategy_unchanged():
    cfg = parse_run_config({"num-clients": 4})
    checked = _checked()
    outcome = RobustLayer(cfg).apply(checked, X)
    assert [c for _, c in outcome.passed] == checked  # the very same objects
    assert all(a is b for (_, a), b in zip(outcome.passed, checked, strict=True))
    assert outcome.metrics == {}


def test_median_with_fedavg_gives_x_plus_the_median_update():
    got, _, outcome = _aggregate("fedavg", _checked(), {"aggregation": "median"})
    np.testing.assert_allclose(got["w"], X["w"] + np.array([0.3, 0.0]), rtol=1e-6)
    np.testing.assert_allclose(got["b"], X["b"] + np.array([0.2]), rtol=1e-6)
    assert "head" not in got  # the private part never reaches the server's aggregate
    assert outcome.metrics["robust/passed"] == 3
    # integer buffers are each client's own (FedAvg averages them as before)
    assert [int(c.arrays["n"]) for _, c in outcome.passed] == [3, 4, 5]


def test_trimmed_mean_with_fedavg():
    # beta = 0.34, n = 3: k = 1 per side -> the coordinate-wise median here
    got, _, _ = _aggregate("fedavg", _checked(), {"aggregation": "trimmed-mean",
                                                 "trim-fraction": 0.34})
    np.testing.assert_allclose(got["w"], X["w"] + np.array([0.3, 0.0]), rtol=1e-6)


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi", "fedavgm", "fedprox"])
def test_median_feeds_the_strategy_own_step(strategy):
    """With median, the strategy steps exactly as if every client had sent x + r."""
    robust, _, _ = _aggregate(strategy, _checked(), {"aggregation": "median"})
    r = ([0.3, 0.0], [0.2])
    same, _, _ = _reference(strategy, _checked(updates=[r, r, r]))
    for k in ("w", "b"):
        np.testing.assert_allclose(robust[k], same[k], rtol=1e-6)
    plain, _, _ = _reference(strategy, _checked())
    assert not np.allclose(plain["w"], robust["w"])  # the outlier moved the plain one


def test_krum_selects_and_fedavg_keeps_the_selected_model():
    # f = 0, n = 3: 1 nearest neighbour; the outlier is never chosen. Scores: client 0
    # |u0 - u1|^2 = 0.04 + 0.04 + 0.04 = 0.12 (its nearest), client 1 likewise -> tie,
    # the lowest index wins
    got, _, outcome = _aggregate("fedavg", _checked(), {"aggregation": "krum", "krum-f": 0})
    assert [i for i, _ in outcome.passed] == [0]
    np.testing.assert_allclose(got["w"], X["w"] + np.float32([0.1, 0.2]), rtol=1e-6)


def test_multi_krum_then_the_example_weighted_mean_of_the_kept():
    got, _, outcome = _aggregate("fedavg", _checked(),
                                 {"aggregation": "multi-krum", "krum-f": 0, "multi-krum-m": 2})
    assert [i for i, _ in outcome.passed] == [0, 1]
    # FedAvg weights 10 and 30 examples
    np.testing.assert_allclose(got["w"], X["w"] + np.float32([0.25, 0.05]), rtol=1e-5)


def test_clipping_before_the_mean():
    got, _, outcome = _aggregate("fedavg", _checked(), {"clip-update-norm": 1.0})
    assert outcome.metrics["robust/clipped"] == 1
    big = np.array([50.0, -40.0, 30.0])
    big = big / np.linalg.norm(big)  # clipped to norm 1 (w and b together)
    w = (10 * np.array([0.1, 0.2]) + 30 * np.array([0.3, 0.0]) + 60 * big[:2]) / 100
    np.testing.assert_allclose(got["w"], X["w"] + w, rtol=1e-5)


def test_scaffold_median_applies_to_the_control_updates_too():
    dc = [{"w": np.float32([1, 1]), "b": np.float32([0])},
          {"w": np.float32([3, -1]), "b": np.float32([2])},
          {"w": np.float32([1e6, 1e6]), "b": np.float32([-1e6])}]
    got, strategy, _ = _aggregate("scaffold", _checked(extra=dc), {"aggregation": "median"})
    np.testing.assert_allclose(got["w"], X["w"] + np.float32([0.3, 0.0]), rtol=1e-6)
    # c <- 0 + (1 / N) * sum of the three replaced delta c = 3/4 * median(delta c)
    np.testing.assert_allclose(strategy.control["w"], 0.75 * np.float32([3, 1]), rtol=1e-6)
    np.testing.assert_allclose(strategy.control["b"], 0.75 * np.float32([0]), atol=1e-7)


def test_fednova_robust_aggregates_normalised_updates():
    """steps 1, 2, 4 (no momentum): a* = a(2) = 2, v_i = (a*/a_i) u_i; median -> r."""
    updates = [([2.0, 0.0], [0.0]), ([2.0, 0.0], [0.0]), ([8.0, 0.0], [0.0])]
    checked = _checked(updates=updates, examples=(1, 1, 1), steps=(1, 2, 4))
    got, _, outcome = _aggregate("fednova", checked, {"aggregation": "median"})
    # v = 4, 2, 4 -> median 4: FedNova then steps x + a* * mean(d) with every d = 4 / 2
    np.testing.assert_allclose(got["w"], X["w"] + np.float32([4.0, 0.0]), rtol=1e-6)
    assert {c.metrics["steps"] for _, c in outcome.passed} == {2}
    # plain FedNova: tau_eff = 7/3, mean(d) = (2 + 1 + 2) / 3 -> 35/9
    plain, _, _ = _reference("fednova", _checked(updates=updates, examples=(1, 1, 1),
                                                 steps=(1, 2, 4)))
    np.testing.assert_allclose(plain["w"], X["w"] + np.float32([35 / 9, 0.0]), rtol=1e-6)


def test_fednova_steps_cannot_inflate_the_step_under_robust_aggregation():
    """A client reporting absurd steps moves neither a* (a median) nor the others' v."""
    updates = [([1.0, 0.0], [0.0])] * 3
    honest = _aggregate("fednova", _checked(updates=updates, steps=(4, 4, 4)),
                        {"aggregation": "median"})[0]
    lying = _aggregate("fednova", _checked(updates=updates, steps=(4, 4, 10**6)),
                       {"aggregation": "median"})[0]
    np.testing.assert_allclose(lying["w"], honest["w"], rtol=1e-6)


def test_attack_metrics_count_attackers_received_and_passed():
    cfg = parse_run_config({"num-clients": 4, "aggregation": "krum", "krum-f": 0,
                            "attack": "scale", "attack-fraction": 0.25})
    from fedpers.attacks import AttackParams, attackers

    bad = sorted(attackers(AttackParams.from_config(cfg)))[0]
    checked = _checked()
    checked = [CheckedReply(pid, c.arrays, c.metrics) for pid, c in
               zip([bad if i == 2 else (bad + 1 + i) % 4 for i in range(3)], checked,
                   strict=True)]
    outcome = RobustLayer(cfg).apply(checked, X)
    assert outcome.metrics["attack/received"] == 1 and outcome.metrics["attack/passed"] == 0


@pytest.mark.parametrize("aggregation", ["mean", "median", "trimmed-mean", "krum",
                                         "multi-krum"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_x_aggregator_is_sound_or_refused(strategy, aggregation):
    """Either config parsing refuses the pair, naming both keys, or the strategy's
    aggregate keeps the shared names and shapes (the round loop casts dtypes), and a
    robust rule hands the strategy nothing of the far-off client's update (the mean
    hands it on: a control)."""
    from fedpers.config import ConfigError

    extra = {"aggregation": aggregation, "krum-f": 0, "multi-krum-m": 2, "trim-fraction": 0.34}
    spec = STRATEGIES[strategy]
    try:
        parse_run_config({"strategy": strategy, "num-clients": 4, **extra})
    except ConfigError as exc:
        assert spec.extra_records and "'aggregation'" in str(exc) and "'strategy'" in str(exc)
        return
    dc = None
    if spec.extra_records:
        dc = [{"w": np.float32([0.1, 0.1]), "b": np.float32([0.1])}] * 2 + \
             [{"w": np.float32([1e4, 1e4]), "b": np.float32([1e4])}]
    got, strategy_obj, outcome = _aggregate(strategy, _checked(extra=dc), extra)
    assert set(got) == {"w", "b", "n"}
    for k in got:
        assert got[k].shape == X[k].shape and np.isfinite(got[k]).all()
    # what the strategy was handed: the outlier's (50, -40) only under the mean
    handed = max(float(np.abs(c.arrays["w"] - X["w"]).max()) for _, c in outcome.passed)
    if aggregation == "mean":
        assert handed > 1.0
    else:
        assert handed < 1.0  # honest updates are at most 0.3 per coordinate
    if spec.extra_records and aggregation != "mean":
        assert np.abs(strategy_obj.control["w"]).max() < 1.0  # Δc of 1e4 ignored
