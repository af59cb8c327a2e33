"""Whole process: ``fedpers run`` against a plain sequential PyTorch FedAvg loop.

Both are started as fresh processes and timed end to end (imports, data, every round,
shutdown), one after the other, ``--repeat`` times each, in this one invocation:

- (a) plain: this file with ``--plain``: one process, no Flower, Ray or MLflow; each
  round samples the round's clients (seeded), trains each in turn with plain SGD (the
  run config's ``lr``, ``momentum``, ``batch-size``, ``local-epochs``; the local update
  of ``benchmarks/overhead/run.py``), averages the updates weighted by examples, and
  evaluates as fedpers does by default: the global model on the global test set and on
  every client's local test part. torch uses every core.
- (b) ``fedpers run --set ...`` with its defaults otherwise (packing = auto, a local
  Ray with every core, a throw-away sqlite MLflow store).

Settings: ``small`` (digits, 30 clients, 10 a round, 2 local epochs, 30 rounds: a
small experiment where start-up weighs) and ``quickstart`` (the ``[base]`` of
``benchmarks/quickstart`` with ``partition = "iid"``: Fashion-MNIST, 20 clients, 10 a
round, 15 rounds). Prints a markdown table of the median wall seconds and the ratio
(b)/(a), the seconds until (b) printed the end of its first round (start-up plus one
round), with each side's final global accuracy (a sanity check, not a comparison: the
two sample clients and initialise differently).

    .venv/bin/python benchmarks/overhead/whole.py [--settings small,quickstart]
        [--repeat 2]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SETTINGS: dict[str, dict[str, object]] = {
    "small": {"task": "digits", "num-clients": 30, "fraction-train": 1 / 3,
              "local-epochs": 2, "num-server-rounds": 30, "partition": "iid"},
    "quickstart": {"task": "fmnist", "num-clients": 20, "num-server-rounds": 15,
                   "fraction-train": 0.5, "local-epochs": 2, "batch-size": 32, "lr": 0.1,
                   "max-samples-per-client": 500, "partition": "iid"},
}
# the console line fedpers prints when a round ends (fedpers.server_outputs)
ROUND_ONE = "round 1/"
QUICK: dict[str, object] = {"num-clients": 4, "num-server-rounds": 2,
                            "max-samples-per-client": 100}


@functools.cache
def _overhead_run() -> Any:
    """``run.py`` of this folder, loaded once (not a package)."""
    spec = importlib.util.spec_from_file_location("overhead_run", Path(__file__).parent / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _local_update(*args: Any, **kw: Any) -> dict:
    """``run.py``'s plain-PyTorch local update (the overhead floor's)."""
    return _overhead_run()._local_update(*args, **kw)


def plain_loop(raw: dict[str, object]) -> float:
    """The plain sequential FedAvg loop; returns the final global accuracy."""
    import numpy as np
    import torch

    from fedpers.config import clients_per_round, parse_run_config
    from fedpers.data import TASKS, DataSpec, load_federated

    cfg = parse_run_config(raw)
    fed = load_federated(DataSpec.from_config(cfg))
    torch.manual_seed(cfg.seed)
    model = TASKS[cfg.task].build_model(fed.input_shape, fed.num_classes)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    per_round = clients_per_round(cfg)[0]
    rng = np.random.default_rng(cfg.seed)

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            hits = sum(int((model(torch.from_numpy(x[i:i + 1024])).argmax(1)
                            == torch.from_numpy(y[i:i + 1024])).sum())
                       for i in range(0, len(x), 1024))
        return hits / max(1, len(x))

    acc = 0.0
    for rnd in range(1, cfg.num_server_rounds + 1):
        total: dict[str, torch.Tensor] = {}
        n = 0
        for pid in rng.choice(cfg.num_clients, per_round, replace=False):
            c = fed.clients[int(pid)]
            update = _local_update(model, state, c.x_train, c.y_train, cfg,
                                   seed=rnd * 1000 + int(pid))
            for k, v in update.items():
                total[k] = total[k] + v * c.num_train if k in total else v * c.num_train
            n += c.num_train
        for k in state:
            if state[k].is_floating_point():
                state[k] = state[k] + total[k] / n
        acc = accuracy(fed.x_test, fed.y_test)
        for c in fed.clients:  # fedpers' default: every client evaluates every round
            accuracy(c.x_test, c.y_test)
    return acc


def _timed(cmd: list[str], cwd: Path, mark: str = "") -> tuple[float, str, float]:
    """Wall seconds of ``cmd``, its stdout, and the seconds until a line of its output
    (stdout or stderr) first contained ``mark`` (NaN without one)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd)
    assert proc.stdout is not None
    lines, first = [], float("nan")
    for line in proc.stdout:
        if mark and first != first and mark in line:  # first is NaN until the mark
            first = time.perf_counter() - t0
        lines.append(line)
    proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{''.join(lines)[-3000:]}")
    return wall, "".join(lines), first


def _fedpers_accuracy(uri: str) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time DESC"], max_results=1)
    return float(runs[0].data.metrics["eval/global_accuracy"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="small,quickstart")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny runs (a smoke test)")
    ap.add_argument("--plain", metavar="JSON", help=argparse.SUPPRESS)  # (a), internal
    args = ap.parse_args(argv)
    if args.plain:
        print(json.dumps({"accuracy": plain_loop(json.loads(args.plain))}))
        return

    fedpers = str(Path(sys.executable).parent / "fedpers")
    rows = []
    for name in args.settings.split(","):
        raw = {**SETTINGS[name], **(QUICK if args.quick else {})}
        plain_s, fed_s, first_s, plain_acc, fed_acc = [], [], [], 0.0, 0.0
        for _ in range(args.repeat):
            wall, out, _ = _timed([sys.executable, __file__, "--plain", json.dumps(raw)], ROOT)
            plain_s.append(wall)
            plain_acc = json.loads(out.strip().splitlines()[-1])["accuracy"]
            with tempfile.TemporaryDirectory(prefix="fedpers-whole-") as tmp:
                uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
                sets = [f"{k}={json.dumps(v)}" for k, v in raw.items()]
                wall, _, first = _timed([fedpers, "run", "--tracking-uri", uri, "--set", *sets],
                                        ROOT, mark=ROUND_ONE)
                fed_s.append(wall)
                first_s.append(first)
                fed_acc = _fedpers_accuracy(uri)
        a, b = statistics.median(plain_s), statistics.median(fed_s)
        rows.append((name, a, b, statistics.median(first_s), plain_acc, fed_acc))

    print(f"\nwhole process, median of {args.repeat} (each side started fresh, one after the "
          f"other); {os.cpu_count()} CPUs\n")
    print("| setting | (a) plain loop s | (b) fedpers run s | (b)/(a) | (b) to the end of "
          "round 1 s | acc (a) | acc (b) |")
    print("|---|---|---|---|---|---|---|")
    for name, a, b, first, acc_a, acc_b in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f} | {first:.1f} | {acc_a:.3f} | "
              f"{acc_b:.3f} |")


if __name__ == "__main__":
    main()
