"""packing = "auto" (fedpers.simulation.auto_packing): a run that leaves virtual-nodes
at 0 gets one SuperNode per Ray worker with its share of a round's clients packed into
one message; results are unchanged (tests/test_virtual_e2e.py runs both)."""

from __future__ import annotations

import pytest

from fedpers.config import ConfigError, parse_run_config
from fedpers.simulation import Resources, auto_packing, ray_workers


def _cfg(**kw):
    return parse_run_config({"task": "digits", "num-clients": 20, **kw})


def _packing(cfg):
    return cfg.virtual_nodes, cfg.clients_per_call


@pytest.mark.parametrize(("kw", "workers", "want"), [
    ({}, 2, (2, 10)),                                   # 20 clients a call on 2 workers
    ({"fraction-train": 0.5, "fraction-evaluate": 0.5}, 2, (2, 5)),
    ({"fraction-train": 0.5, "fraction-evaluate": 0.1}, 3, (3, 4)),  # ceil(10 / 3)
    ({"fraction-train": 0.05, "fraction-evaluate": 0.05}, 2, (0, 1)),  # 1 <= 2: as is
    ({}, 20, (0, 1)),                                   # a worker per client already
    ({}, 64, (0, 1)),
    ({"packing": "off"}, 2, (0, 1)),
    ({"virtual-nodes": 4}, 2, (4, 1)),                  # the user's choice stays
    ({"virtual-nodes": 4, "clients-per-call": 3}, 2, (4, 3)),
    ({"checkpoint-every": 2}, 2, (0, 1)),               # virtual nodes do not resume
])
def test_auto_packing_gives_each_worker_one_message_per_call(kw, workers, want):
    cfg = _cfg(**kw)
    packed = auto_packing(cfg, workers)
    assert _packing(packed) == want
    # only how the run is simulated changes: not its digest, nor any other key
    assert packed.digest() == cfg.digest()
    changed = {k for k, v in packed.to_dict().items() if cfg.to_dict()[k] != v}
    assert changed <= {"virtual-nodes", "clients-per-call"}


def test_packing_names_its_values():
    with pytest.raises(ConfigError, match="'packing' = 'on': must be one of auto, off"):
        _cfg(packing="on")


def test_ray_workers_are_cpus_over_cpus_per_client(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_workers(Resources(num_cpus=4)) == 4
    assert ray_workers(Resources(num_cpus=4, client_cpus=2.0)) == 2
    assert ray_workers(Resources(num_cpus=1, client_cpus=2.0)) == 1
    # a Ray cluster's size is not known before joining it: no automatic packing
    assert ray_workers(Resources(ray_address="auto")) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_workers(Resources()) is None
