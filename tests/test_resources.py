"""Where simulated clients run (fedpers.simulation.Resources): local Ray, a Ray
cluster, CPUs and GPU shares per client. No Ray is started here."""

from __future__ import annotations

import pytest

from fedpers import cli, simulation
from fedpers.config import parse_run_config
from fedpers.simulation import Resources, backend_config, client_gpu_share


def test_local_ray_gets_the_cpus_and_one_thread_per_client(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = backend_config(3)
    assert cfg["init_args"]["num_cpus"] == 3 and cfg["init_args"]["num_gpus"] == 0
    assert "address" not in cfg["init_args"]
    assert cfg["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}


def test_a_cluster_address_joins_it_without_declaring_cpus(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = backend_config(None, 2.0, 0.25, "auto")
    assert cfg["init_args"]["address"] == "auto"
    # Ray refuses num_cpus / num_gpus when connecting to an existing cluster
    assert "num_cpus" not in cfg["init_args"] and "num_gpus" not in cfg["init_args"]
    assert cfg["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.25}
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    env = backend_config()
    assert env["init_args"]["address"] == "10.0.0.1:6379" and "num_cpus" not in env["init_args"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_cpus": 0}, "num-cpus must be >= 1"),
    ({"client_cpus": 0.0}, "client-cpus must be > 0"),
    ({"client_gpus": 1.5}, "client-gpus must be in"),
    ({"num_cpus": 4, "ray_address": "auto"}, "a Ray cluster at ray-address"),
])
def test_bad_resources_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Resources(**kwargs)


def test_gpu_share_explicit_or_none_on_cpu():
    cfg = parse_run_config({"task": "digits", "num-clients": 8})
    assert client_gpu_share(cfg, Resources(client_gpus=0.5)) == 0.5
    assert client_gpu_share(cfg.replace(device="cpu"), Resources()) == 0.0


def test_cli_passes_resources_to_the_simulation(monkeypatch, tracking_uri):
    seen = {}

    def fake_run(cfg, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)  # stop before any summary is read back

    monkeypatch.setattr(simulation, "run_simulation", fake_run)
    with pytest.raises(SystemExit):
        cli.main(["run", "--set", "task='digits'", "--tracking-uri", tracking_uri,
                  "--client-cpus", "2", "--client-gpus", "0.25", "--ray-address", "auto"])
    assert seen["resources"] == Resources(client_cpus=2.0, client_gpus=0.25,
                                          ray_address="auto")


def test_cli_refuses_bad_resources_before_any_work(capsys, tracking_uri):
    assert cli.main(["run", "--set", "task='digits'", "--tracking-uri", tracking_uri,
                     "--client-cpus", "0"]) == 2
    assert "client-cpus must be > 0" in capsys.readouterr().err
