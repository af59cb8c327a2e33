"""Where a round's time goes, on the clock: one fedpers run on the Simulation Engine with
every call and every client's work stamped (issue 9; see README.md).

Per timed round it prints: the server's time before it sends (selection, messages),
the time from sending to the first client starting (Flower's node polling, Ray's
dispatch), the span of the clients' work with each worker's busy seconds, the time
from the last client finishing to the grid returning the replies, and the server's
time after it (sizing, screening, aggregation, MLflow); then every full (generation 2)
garbage collection in the driver and in the workers.

    .venv/bin/python benchmarks/overhead/timeline.py --set virtual-nodes=2 clients-per-call=25

Diagnostics, not a measurement: it adds a file append per client call.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ENV = "FEDPERS_TIMELINE_LOG"
_gc_start: list[float] = []


def _log(record: dict) -> None:
    try:
        with open(os.environ[ENV], "a") as fh:
            fh.write(json.dumps(record) + "\n")
    except OSError:  # a worker still running after the driver removed the log
        pass


def _gc_callback(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_start[:] = [time.time()]
    elif info["generation"] == 2 and _gc_start:
        _log({"gc": os.getpid(), "a": _gc_start[0], "b": time.time()})


def timing_mod(msg, context, call_next):
    """Stamps each client call in the worker (inside fedpers' virtual-client mod)."""
    if _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)
    t0 = time.time()
    reply = call_next(msg, context)
    _log({"worker": os.getpid(), "a": t0, "b": time.time()})
    return reply


def _stamp(kind: str, fn):
    def wrapped(*args, **kwargs):
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            _log({"server": kind, "a": t0, "b": time.time()})
    return wrapped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="fmnist")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--samples", type=int, default=250, help="max-samples-per-client")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    import fedpers.server_app as server_app
    import fedpers.virtual as virtual
    from fedpers.client_app import build_client_app
    from fedpers.config import parse_run_config
    from fedpers.config_files import parse_set_args
    from fedpers.simulation import run_simulation

    with tempfile.TemporaryDirectory(prefix="fedpers-timeline-") as tmp:
        os.environ[ENV] = str(Path(tmp) / "timeline.jsonl")  # Ray workers inherit it
        gc.callbacks.append(_gc_callback)
        n = args.clients
        cfg = parse_run_config({
            "task": args.task, "num-clients": n, "fraction-train": 1.0,
            "num-server-rounds": args.rounds, "partition": "iid",
            "max-samples-per-client": args.samples, "eval-every": args.rounds + 1,
            "fraction-evaluate": 1.0 / n, "device": "cpu",
            "tracking-uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "timeline",
            **parse_set_args(args.set)})
        server_app.Experiment.train_round = _stamp("round", server_app.Experiment.train_round)
        # the grid the round loop calls (the outermost, so each call is stamped once)
        grid = virtual.VirtualGrid if cfg.virtual_nodes else InMemoryGrid
        grid.send_and_receive = _stamp("call", grid.send_and_receive)
        run_simulation(cfg, run_name="timeline", num_cpus=args.cpus,
                       client_app=build_client_app([timing_mod]))
        gc.callbacks.remove(_gc_callback)
        events = [json.loads(line) for line in open(os.environ[ENV])]

    rounds = [e for e in events if e.get("server") == "round"]
    calls = [e for e in events if e.get("server") == "call"]
    work = [e for e in events if "worker" in e]
    t_zero = rounds[0]["a"]
    print(f"{args.task}, {n} clients, {args.samples} samples cap, extra keys {args.set or 'none'}; "
          f"rounds {args.warmup + 1}-{args.rounds - 1}; seconds")
    print("| round | total | before send | send to first start | clients' span | busy per "
          "worker | last end to replies | after replies |")
    print("|---:|---:|---:|---:|---:|---|---:|---:|")
    for i, r in enumerate(rounds[args.warmup:args.rounds - 1], start=args.warmup + 1):
        call = next(c for c in calls if r["a"] <= c["a"] <= r["b"])
        mine = [w for w in work if call["a"] <= w["a"] <= call["b"]]
        first, last = min(w["a"] for w in mine), max(w["b"] for w in mine)
        busy: dict[int, float] = {}
        for w in mine:
            busy[w["worker"]] = busy.get(w["worker"], 0.0) + w["b"] - w["a"]
        print(f"| {i} | {r['b'] - r['a']:.3f} | {call['a'] - r['a']:.3f} | "
              f"{first - call['a']:.3f} | {last - first:.3f} | "
              f"{', '.join(f'{b:.3f}' for b in busy.values())} | {call['b'] - last:.3f} | "
              f"{r['b'] - call['b']:.3f} |")
    driver = os.getpid()
    seen = set()
    for e in events:
        if "gc" in e and (e["gc"], round(e["a"], 3)) not in seen:
            seen.add((e["gc"], round(e["a"], 3)))
            who = "driver" if e["gc"] == driver else f"worker {e['gc']}"
            print(f"full gc in {who}: {e['b'] - e['a']:.3f} s at +{e['a'] - t_zero:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
