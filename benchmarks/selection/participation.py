"""Who does a selector pick? Run one variant of this benchmark for one seed and
analyse its ``participation.csv`` (times selected per client, next to its device).

    .venv/bin/python benchmarks/selection/participation.py fedavg-oort --seed 0

prints how concentrated the selections are (Jain's index, the share held by the
most-picked quarter of clients), how many clients were picked only once, and how the
selection counts relate to each client's data size, compute speed and predicted round
time (the share of selections given to clients slower than the round deadline, against
their share of the clients). ``--run-id`` analyses a finished run instead of running.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from fedpers.bench_definition import load_benchmark
from fedpers.bench_plan import merge_config
from fedpers.config import parse_run_config

HERE = Path(__file__).resolve().parent


def analyse(rows: list[dict[str, str]], deadline: float) -> dict[str, float]:
    sel = np.array([int(r["times-selected"]) for r in rows], dtype=float)
    n = np.array([int(r["num-examples"]) for r in rows], dtype=float)
    sps = np.array([float(r["compute-sps"]) for r in rows])
    expected = np.array([float(r["expected-s"]) if r["expected-s"] else np.nan for r in rows])
    quarter = max(1, len(rows) // 4)
    out = {"clients": len(rows), "selections": sel.sum(),
           "jain": sel.sum() ** 2 / (len(sel) * np.square(sel).sum()),
           "top_quarter_share": np.sort(sel)[::-1][:quarter].sum() / sel.sum(),
           "never": int((sel == 0).sum()), "once": int((sel == 1).sum()),
           "max": int(sel.max()),
           "spearman_num_examples": float(spearmanr(sel, n).statistic),
           "spearman_compute_sps": float(spearmanr(sel, sps).statistic)}
    if np.isfinite(expected).all():
        out["spearman_expected_s"] = float(spearmanr(sel, expected).statistic)
    if deadline > 0:
        slow = expected > deadline
        out["slower_than_deadline"] = int(slow.sum())
        out["slow_share_of_clients"] = slow.mean()
        out["slow_share_of_selections"] = sel[slow].sum() / sel.sum()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", help="a variant of benchmarks/selection, e.g. fedavg-oort")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracking-uri", default="",
                    help="MLflow store for the run (default: a temporary one)")
    ap.add_argument("--run-id", default="", help="analyse this finished run instead")
    args = ap.parse_args()

    import mlflow

    bench = load_benchmark(HERE)
    names = [v.name for v in bench.variants]
    if args.variant not in names:
        raise SystemExit(f"unknown variant {args.variant!r}; valid: {', '.join(names)}")
    variant = next(v for v in bench.variants if v.name == args.variant)
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.tracking_uri or f"sqlite:///{tmp}/mlflow.db"
        cfg = parse_run_config(merge_config(bench, variant, args.seed,
                                            experiment="selection-participation",
                                            tracking_uri=uri))
        run_id = args.run_id
        if not run_id:
            from fedpers.simulation import run_simulation
            run_id = run_simulation(cfg)
        client = mlflow.MlflowClient(tracking_uri=uri)
        path = client.download_artifacts(run_id, "participation.csv", tmp)
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        acc = client.get_run(run_id).data.metrics.get("eval/global_accuracy", float("nan"))
        stats = analyse(rows, cfg.round_deadline)
    print(f"{args.variant} seed {args.seed} (run {run_id}): final global accuracy {acc:.4f}")
    for k, v in stats.items():
        print(f"  {k:28s} {v:.3f}" if isinstance(v, float) else f"  {k:28s} {v}")


if __name__ == "__main__":
    main()
