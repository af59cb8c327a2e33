"""Scale: start-up, seconds per round and peak memory from 100 to 10,000 clients (issue 9).

For each size N in ``--sizes``: N registered clients, 1% of them (``--fraction``, at
least one) sampled per round, a stateful combination (SCAFFOLD + FedRep + top-k with
error feedback) on Fashion-MNIST, run through ``fedpers.simulation.run_simulation``
with ``virtual-nodes`` = the clients per round (``fedpers.virtual``): that many
SuperNodes serve the round's clients, each client's state on disk between calls.
``--one-node-per-client`` runs the same with ``virtual-nodes = 0`` for comparison.

Each size runs in a fresh child process (so no cache or memory of one size is
carried into the next) while this process samples the resident memory of the
child's whole process tree (the driver with the ServerApp, Ray's GCS, raylet and
worker processes) from ``/proc`` every ``--sample-every`` seconds. Reported per size:

- start-up: from starting the child to the end of round 1 (imports, partitioning
  the data, Ray and its workers starting, the workers loading the data, round 1);
- s/round: mean wall time of rounds ``warmup+1 .. rounds-1``, from the MLflow
  timestamps of consecutive rounds (the last round evaluates and is not timed);
- peak RSS: the largest sum of VmRSS over the tree seen in one sample (pages shared
  between processes, e.g. the torch libraries, are counted once per process: an upper
  bound), and the driver's own peak (VmHWM).

Linux only (``/proc``). Prints the settings and a markdown table.

    .venv/bin/python benchmarks/scale/run.py [--sizes 100,1000,10000] [--rounds 6]
        [--warmup 2] [--samples 50] [--cpus N] [--one-node-per-client] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fedpers.config import clients_per_round, parse_run_config  # noqa: E402
from fedpers.config_files import parse_set_args  # noqa: E402

STATEFUL = {"strategy": "scaffold", "personalization": "fedrep", "codec": "topk",
            "error-feedback": True}
GIB = 1024 ** 3


# ---------------------------------------------------------------- memory of a process tree
def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (``/proc/<pid>/task/*/children``)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the task or process is gone
            pass
    return out


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, as far as they are alive."""
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo += _children(pid)
    return seen


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss(root: int) -> int:
    """Sum of the resident set sizes (bytes) of ``root``'s process tree now."""
    return 1024 * sum(_status_kib(pid, "VmRSS") for pid in process_tree(root))


class PeakSampler(threading.Thread):
    """Samples :func:`tree_rss` of ``pid`` until stopped; keeps the peak, the driver's
    own peak (VmHWM) and the largest number of processes seen."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = self.driver_peak = self.max_procs = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = process_tree(self.pid)
            self.max_procs = max(self.max_procs, len(pids))
            self.peak = max(self.peak, 1024 * sum(_status_kib(p, "VmRSS") for p in pids))
            self.driver_peak = max(self.driver_peak, 1024 * _status_kib(self.pid, "VmHWM"))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---------------------------------------------------------------- one size (child process)
def size_config(n: int, args: argparse.Namespace, tmp: str) -> dict:
    """The run config of size ``n``: 1% sampled, evaluation on one client in the last
    round only, the stateful combination, virtual nodes = clients per round."""
    raw = {"task": args.task, "num-clients": n, "fraction-train": args.fraction,
           "num-server-rounds": args.rounds, "local-epochs": 1, "partition": "iid",
           "max-samples-per-client": args.samples, "eval-every": args.rounds + 1,
           "fraction-evaluate": 1.0 / n, "device": "cpu", **STATEFUL,
           "tracking-uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "scale",
           "client-state-dir": f"{tmp}/client-state", **parse_set_args(args.set)}
    per_round = max(clients_per_round(parse_run_config(raw)))
    if args.one_node_per_client:
        raw["virtual-nodes"] = 0
    elif "virtual-nodes" not in parse_set_args(args.set):  # --set may choose fewer
        raw["virtual-nodes"] = per_round
    return raw


def child(raw: dict, cpus: int, out: Path) -> None:
    """Run one size; write the MLflow round timestamps as JSON to ``out``."""
    from mlflow.tracking import MlflowClient

    from fedpers.simulation import run_simulation

    cfg = parse_run_config(raw)
    run_id = run_simulation(cfg, run_name=f"scale-{cfg.num_clients}", num_cpus=cpus)
    hist = MlflowClient(cfg.tracking_uri).get_metric_history(run_id, "clients/selected")
    stamps = [m.timestamp / 1000.0 for m in sorted(hist, key=lambda m: m.step)]
    trained = MlflowClient(cfg.tracking_uri).get_metric_history(run_id, "clients/trained")
    out.write_text(json.dumps({"stamps": stamps, "run_id": run_id,
                               "trained": [m.value for m in trained]}))


def measure(n: int, args: argparse.Namespace, tmp: str) -> dict:
    """Run size ``n`` in a child process, sampling its tree's memory."""
    raw = size_config(n, args, tmp)
    out = Path(tmp) / f"size-{n}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(raw),
                             "--child-out", str(out), "--cpus", str(args.cpus)], env=env)
    sampler = PeakSampler(proc.pid, args.sample_every)
    sampler.start()
    rc = proc.wait()
    sampler.stop()
    total = time.time() - t0
    if rc != 0:
        raise RuntimeError(f"size {n}: the run failed (exit code {rc}); see its log above")
    res = json.loads(out.read_text())
    stamps = res["stamps"]
    if len(stamps) != args.rounds:
        raise RuntimeError(f"size {n}: expected {args.rounds} rounds in MLflow, found "
                           f"{len(stamps)}")
    gaps = [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]
    timed = gaps[args.warmup - 1:-1]  # the gap into round r is gaps[r - 2]
    return {"n": n, "per_round": clients_per_round(parse_run_config(raw))[0],
            "virtual_nodes": raw["virtual-nodes"], "startup_s": stamps[0] - t0,
            "round_s": statistics.mean(timed), "total_s": total, "peak": sampler.peak,
            "driver_peak": sampler.driver_peak, "procs": sampler.max_procs,
            "trained": res["trained"]}


# ---------------------------------------------------------------- report
def table(rows: list[dict]) -> str:
    lines = ["| clients | per round | SuperNodes | start-up s | s/round | peak RSS (tree) GiB "
             "| driver peak GiB | processes | run s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        nodes = r["virtual_nodes"] or r["n"]
        lines.append(f"| {r['n']:,} | {r['per_round']} | {nodes:,} | {r['startup_s']:.1f} | "
                     f"{r['round_s']:.3f} | {r['peak'] / GIB:.2f} | "
                     f"{r['driver_peak'] / GIB:.2f} | {r['procs']} | {r['total_s']:.0f} |")
    return "\n".join(lines)


def growth(rows: list[dict]) -> str:
    """How start-up, s/round and peak memory grow from one size to the next."""
    out = []
    for a, b in zip(rows[:-1], rows[1:], strict=True):
        out.append(f"{a['n']:,} -> {b['n']:,} clients ({b['n'] / a['n']:.0f}x): start-up "
                   f"x{b['startup_s'] / a['startup_s']:.2f}, s/round "
                   f"x{b['round_s'] / a['round_s']:.2f}, peak RSS x{b['peak'] / a['peak']:.2f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000", help="num-clients, comma-separated")
    ap.add_argument("--fraction", type=float, default=0.01, help="fraction-train")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="first rounds left out")
    ap.add_argument("--samples", type=int, default=50, help="max-samples-per-client")
    ap.add_argument("--task", default="fmnist")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="Ray CPUs")
    ap.add_argument("--one-node-per-client", action="store_true",
                    help="virtual-nodes = 0: one SuperNode per client (the comparison)")
    ap.add_argument("--sample-every", type=float, default=0.5, help="memory sampling, s")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra run-config keys")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: digits, sizes 20,50, 3 rounds, 1 warm-up, 30 samples")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child), args.cpus, Path(args.child_out))
        return 0
    if args.quick:
        args.task, args.sizes, args.rounds, args.warmup, args.samples = \
            "digits", "20,50", 3, 1, 30
    if args.warmup < 1 or args.rounds < args.warmup + 2:
        ap.error("need --warmup >= 1 (round 1 has no start stamp) and --rounds >= "
                 "--warmup + 2 (the last round evaluates)")
    if not Path("/proc/self/status").exists():
        ap.error("needs Linux /proc to measure memory")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedpers-scale-") as tmp:
        for n in sizes:
            row = measure(n, args, tmp)
            rows.append(row)
            print(f"[{n} clients] start-up {row['startup_s']:.1f} s, {row['round_s']:.3f} "
                  f"s/round, peak RSS {row['peak'] / GIB:.2f} GiB, clients trained per "
                  f"round {row['trained']}", flush=True)
    import torch

    mode = ("one SuperNode per client" if args.one_node_per_client
            else "virtual-nodes from --set" if "virtual-nodes" in parse_set_args(args.set)
            else "virtual-nodes = clients per round")
    method = ", ".join(f"{k}={v}" for k, v in STATEFUL.items())
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')} {platform.node()}: {os.cpu_count()} CPUs, "
          f"--cpus {args.cpus}; torch {torch.__version__}, Python "
          f"{platform.python_version()}; task {args.task}, iid, max {args.samples} samples "
          f"per client, fraction-train {args.fraction}, {method}"
          f"{', ' + ' '.join(args.set) if args.set else ''}; {mode}; {args.rounds} rounds, "
          f"timed rounds {args.warmup + 1}-{args.rounds - 1}")
    print("\n" + table(rows))
    if len(rows) > 1:
        print("\n" + growth(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
