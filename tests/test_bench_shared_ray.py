"""A sweep starts Ray once (fedpers.simulation.sweep_ray) and its runs reuse it; each
run's metrics are those of the same run started on its own."""

from __future__ import annotations

import pytest
from conftest import metric_history
from mlflow.tracking import MlflowClient
from test_bench import SMOKE, write_bench

from fedpers import bench_sweep, simulation
from fedpers.bench_definition import load_benchmark
from fedpers.bench_plan import plan_runs
from fedpers.bench_tags import TAG_PARENT, TAG_VARIANT

pytestmark = pytest.mark.slow

# 4 clients, every one a round on 2 workers: the runs pack (packing = auto) too
BODY = SMOKE.replace("num-clients = 2", "num-clients = 4").replace(
    "num-server-rounds = 2", "num-server-rounds = 3")


def test_a_sweep_starts_ray_once_and_gives_the_runs_started_one_by_one(tmp_path,
                                                                         monkeypatch):
    import ray

    folder = write_bench(tmp_path / "shared", BODY)
    inits = []
    real_init = ray.init
    monkeypatch.setattr(ray, "init", lambda *a, **k: (inits.append(k), real_init(*a, **k))[1])
    uri = f"sqlite:///{tmp_path / 'sweep.db'}"
    res = bench_sweep.run_benchmark(folder, seeds=1, tracking_uri=uri, progress=False,
                                    resources=simulation.Resources(num_cpus=2))
    assert len(res.ran) == 2 and not res.failed
    assert len(inits) == 1, "a sweep starts Ray once"
    assert not ray.is_initialized(), "and shuts it down at the end"

    alone_uri = f"sqlite:///{tmp_path / 'alone.db'}"
    client = MlflowClient(tracking_uri=uri)
    children = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{TAG_PARENT}` = '{res.parent_run_id}'")
    by_variant = {c.data.tags[TAG_VARIANT]: c.info.run_id for c in children}
    for run in plan_runs(load_benchmark(folder), seeds=1, experiment="alone",
                         tracking_uri=alone_uri):
        alone = simulation.run_simulation(run.cfg, num_cpus=2)
        want, got = metric_history(alone_uri, alone), metric_history(uri, by_variant[run.variant])
        assert set(got) == set(want)
        for key, history in want.items():
            assert got[key] == history, (run.variant, key)  # bit for bit
    assert len(inits) == 3  # one more Ray per run started on its own
