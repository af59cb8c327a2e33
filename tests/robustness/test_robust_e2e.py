"""End to end through Flower's Simulation Engine: one of four clients uploads its
update scaled by 100; the mean follows it, the coordinate-wise median does not."""

from __future__ import annotations

import pytest
from conftest import metric_history

from fedpers.config import parse_run_config
from fedpers.simulation import run_simulation

pytestmark = pytest.mark.slow

BASE = {"task": "digits", "num-clients": 4, "num-server-rounds": 3, "local-epochs": 2,
        "momentum": 0.9, "partition": "iid", "batch-size": 32, "lr": 0.1,
        "attack": "scale", "attack-fraction": 0.25, "attack-scale": 100.0,
        # the norm check off: this compares the aggregators alone
        "max-update-norm": 0.0}


def _run(tmp_path, aggregation: str) -> dict[str, list[tuple[int, float]]]:
    uri = f"sqlite:///{tmp_path / f'{aggregation}.db'}"
    cfg = parse_run_config({**BASE, "aggregation": aggregation, "tracking-uri": uri})
    return metric_history(uri, run_simulation(cfg))


def test_median_tolerates_a_scaling_attacker_the_mean_does_not(tmp_path):
    mean = _run(tmp_path, "mean")
    median = _run(tmp_path, "median")
    for hist in (mean, median):
        assert [v for _, v in hist["attack/received"]] == [1, 1, 1]  # one attacker
        assert [v for _, v in hist["clients/trained"]] == [4, 4, 4]  # nobody rejected
        assert [v for _, v in hist["clients/rejected"]] == [0, 0, 0]
        assert "clients/rejected_norm" not in hist  # a reason is logged once it occurs
    acc_mean = dict(mean["eval/global_accuracy"])[3]
    acc_median = dict(median["eval/global_accuracy"])[3]
    assert acc_median > 0.5  # digits: chance is 0.1
    assert acc_mean < 0.3
    assert [v for _, v in median["robust/passed"]] == [4, 4, 4]
