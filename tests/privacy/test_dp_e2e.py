"""End to end through Flower's Simulation Engine: DP-FedAvg with a lossy codec logs
the privacy budget every round, growing as the accountant says."""

from __future__ import annotations

import pytest
from conftest import metric_history

from fedpers.config import parse_run_config
from fedpers.privacy.accountant import RdpAccountant
from fedpers.simulation import run_simulation

pytestmark = pytest.mark.slow


def test_dp_run_logs_epsilon_every_round(tmp_path):
    uri = f"sqlite:///{tmp_path / 'dp.db'}"
    cfg = parse_run_config({
        "task": "digits", "num-clients": 4, "num-server-rounds": 3, "fraction-train": 0.5,
        "local-epochs": 1, "partition": "iid", "batch-size": 32, "lr": 0.1,
        "dp": "client-clipping", "dp-clip-norm": 0.5, "dp-noise-multiplier": 0.8,
        "codec": "q8", "tracking-uri": uri, "experiment": "dp"})
    hist = metric_history(uri, run_simulation(cfg))
    eps = hist["privacy/epsilon"]
    assert [s for s, _ in eps] == [1, 2, 3]
    values = [v for _, v in eps]
    assert values[0] > 0 and values[0] < values[1] < values[2]
    # q = 2 of 4 clients per round, z = 0.8, delta = 1e-5: the accountant's numbers
    acc = RdpAccountant(0.5, 0.8, 1e-5)
    assert values == pytest.approx([acc.epsilon(t) for t in (1, 2, 3)], rel=1e-9)
    assert [v for _, v in hist["privacy/releases"]] == [1, 2, 3]
    assert [v for _, v in hist["clients/trained"]] == [2, 2, 2]
    # noise std on the average: z C / m = 0.8 * 0.5 / 2
    assert [v for _, v in hist["privacy/noise_std"]] == pytest.approx([0.2] * 3)
    # the server re-clips every decoded update (q8 may move it past C by its error)
    assert [s for s, _ in hist["privacy/clipped_server"]] == [1, 2, 3]
    assert all(0 <= v <= 2 for _, v in hist["privacy/clipped_server"])
