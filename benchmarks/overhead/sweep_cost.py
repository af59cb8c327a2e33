"""Per-run fixed cost inside a sweep: what a run costs beyond its rounds.

The same K short runs (a tiny ``benchmark.toml`` in a temporary folder: ``--task``,
``--clients`` clients, ``--rounds`` rounds, variants that differ in ``lr``) run

- (a) one after the other, each through ``fedpers.simulation.run_simulation`` on its own,
  starting and stopping its own Ray (what every run of a sweep did before the sweep
  kept one Ray);
- (b) as one ``fedpers bench`` sweep (``fedpers.bench_sweep.run_benchmark``), which
  starts Ray once.

Both in this one invocation, (a) first. A run's rounds span the MLflow timestamps of
its first and last round's ``comm/bytes_up`` plus one median round (the first round's
own time); its fixed cost is its share of the wall time minus that span. Prints a
markdown table with the fixed cost per run of (a) and (b) and their ratio.

    .venv/bin/python benchmarks/overhead/sweep_cost.py [--runs 4] [--rounds 5]
        [--clients 4] [--task digits] [--cpus N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROUND_METRIC = "comm/bytes_up"


def _definition(task: str, clients: int, rounds: int, runs: int) -> str:
    variants = "\n".join(f"[variants.lr{i}]\nlr = {0.05 + 0.01 * i:.2f}\n"
                         for i in range(runs))
    return textwrap.dedent(f"""\
        seeds = [0]

        [base]
        task = "{task}"
        num-clients = {clients}
        num-server-rounds = {rounds}
        partition = "iid"
        max-samples-per-client = 200

        """) + variants


def rounds_span(uri: str, run_id: str) -> float:
    """Seconds a run spent in its rounds (first to last round stamp, plus one median
    round for the first round itself)."""
    from mlflow.tracking import MlflowClient

    hist = MlflowClient(tracking_uri=uri).get_metric_history(run_id, ROUND_METRIC)
    stamps = sorted(m.timestamp / 1000.0 for m in hist)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return stamps[-1] - stamps[0] + (statistics.median(gaps) if gaps else 0.0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--task", default="digits")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)

    from fedpers.bench_definition import load_benchmark
    from fedpers.bench_plan import plan_runs
    from fedpers.bench_sweep import run_benchmark
    from fedpers.simulation import Resources, run_simulation

    resources = Resources(num_cpus=args.cpus)
    with tempfile.TemporaryDirectory(prefix="fedpers-sweep-cost-") as tmp:
        folder = Path(tmp) / "sweepcost"
        folder.mkdir()
        (folder / "benchmark.toml").write_text(
            _definition(args.task, args.clients, args.rounds, args.runs))
        (folder / "README.md").write_text("# sweep cost\n\nper-run fixed cost\n")
        bench = load_benchmark(folder)

        uri_a = f"sqlite:///{Path(tmp) / 'alone.db'}"
        t0 = time.perf_counter()
        ids_a = [run_simulation(run.cfg, resources=resources)
                 for run in plan_runs(bench, experiment="alone", tracking_uri=uri_a)]
        wall_a = time.perf_counter() - t0

        uri_b = f"sqlite:///{Path(tmp) / 'sweep.db'}"
        t0 = time.perf_counter()
        res = run_benchmark(folder, tracking_uri=uri_b, progress=False, resources=resources)
        wall_b = time.perf_counter() - t0
        ids_b = list(res.ran)

        fixed_a = (wall_a - sum(rounds_span(uri_a, r) for r in ids_a)) / len(ids_a)
        fixed_b = (wall_b - sum(rounds_span(uri_b, r) for r in ids_b)) / len(ids_b)

    print(f"\n{args.runs} runs of task={args.task}, {args.clients} clients, {args.rounds} "
          f"rounds, {args.cpus} CPUs; one invocation, (a) first\n")
    print("| | wall s | fixed s per run |")
    print("|---|---|---|")
    print(f"| (a) runs on their own (a Ray each) | {wall_a:.1f} | {fixed_a:.2f} |")
    print(f"| (b) one sweep (one Ray) | {wall_b:.1f} | {fixed_b:.2f} |")
    print(f"\nfixed cost per run (b)/(a): {fixed_b / fixed_a:.2f}")


if __name__ == "__main__":
    main()
