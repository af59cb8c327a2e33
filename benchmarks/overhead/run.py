"""Overhead: seconds per round of fedpers on Flower's Simulation Engine vs a plain PyTorch floor.

The same local work -- each of N clients per round trains E local epochs of plain
SGD (the run config's ``lr``, ``momentum``, ``batch-size``; the batching and seeds of
``fedpers.training.train_local``) on its own partition, starting from the global
model, and the server averages the updates weighted by examples -- is run

- (a) as the raw floor, plain PyTorch with no Flower, Ray or MLflow, in two ways
  that use the same ``--cpus`` cores: ``threads`` (one process, clients in turn,
  ``torch.set_num_threads(cpus)``) and ``procs`` (``cpus`` worker processes with one
  torch thread each, the round's clients dealt out statically, the parent
  averaging; the shape of what the Simulation Engine does);
- (b) through ``fedpers.simulation.run_simulation`` (Ray with ``cpus`` CPUs, one CPU
  per client, i.e. ``cpus`` single-thread ``ClientAppActor`` workers), with a
  throw-away sqlite MLflow store, every client training every round
  (``fraction-train`` = 1) and evaluation turned down as far as the config allows
  (``eval-every`` past the last round, so only the last round evaluates, on one
  client: ``fraction-evaluate`` = 1/N).

Each size runs ``--rounds`` rounds; rounds ``warmup+1 .. rounds-1`` are timed (the
first rounds include Ray start-up, worker imports and caches; the last round of (b)
evaluates). (b)'s round time is the gap between the MLflow timestamps of
consecutive rounds' metrics (``Tracker.log_metrics`` stamps each round when it ends).
Prints the settings and a markdown table with the ratio (b)/(a) per size.

    .venv/bin/python benchmarks/overhead/run.py [--sizes 10,50,200] [--rounds 6]
        [--warmup 2] [--epochs 1] [--samples 250] [--cpus N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fedpers.config import RunConfig, parse_run_config  # noqa: E402
from fedpers.config_files import parse_set_args  # noqa: E402

FLOORS = ("threads", "procs")
PROBE_ENV = "FEDPERS_OVERHEAD_PROBE"


# ---------------------------------------------------------------- the floor (a)
def _local_update(model, global_state, x, y, cfg: RunConfig, seed: int) -> dict:
    """One client's update (trained - global), plain PyTorch: what train_local does."""
    import torch

    model.load_state_dict(global_state)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(cfg.local_epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    with torch.no_grad():
        return {k: v.detach() - global_state[k] for k, v in model.state_dict().items()}


class _Floor:
    """The federation's data and one model, in one process."""

    def __init__(self, cfg: RunConfig) -> None:
        import torch

        from fedpers.data import TASKS, DataSpec, load_federated
        from fedpers.seeds import Stream, derive_seed

        self.cfg = cfg
        self.fed = load_federated(DataSpec.from_config(cfg))
        torch.manual_seed(derive_seed(cfg.seed, Stream.MODEL_INIT))
        self.model = TASKS[cfg.task].build_model(self.fed.input_shape, self.fed.num_classes)

    def weighted_sum(self, global_state: dict, rnd: int, pids: list[int]) -> tuple[dict, int]:
        from fedpers.seeds import Stream, derive_seed

        total: dict = {}
        n = 0
        for pid in pids:
            c = self.fed.clients[pid]
            upd = _local_update(self.model, global_state, c.x_train, c.y_train, self.cfg,
                                derive_seed(self.cfg.seed, Stream.CLIENT_TRAIN, rnd, pid))
            for k, v in upd.items():
                total[k] = total[k] + v * c.num_train if k in total else v * c.num_train
            n += c.num_train
        return total, n


_WORKER: _Floor | None = None


def _worker_init(cfg_dict: dict) -> None:
    import torch

    torch.set_num_threads(1)
    global _WORKER
    _WORKER = _Floor(parse_run_config(cfg_dict))


def _worker_round(args: tuple[dict, int, list[int]]) -> tuple[dict, int]:
    assert _WORKER is not None
    return _WORKER.weighted_sum(*args)


def run_floor(cfg: RunConfig, mode: str, cpus: int) -> list[float]:
    """Wall seconds of each round of the raw floor (all ``num-clients`` clients train)."""
    import torch

    floor = _Floor(cfg)
    state = {k: v.detach().clone() for k, v in floor.model.state_dict().items()}
    pids = list(range(cfg.num_clients))
    pool = None
    threads = torch.get_num_threads()
    if mode == "procs":
        pool = mp.get_context("spawn").Pool(cpus, _worker_init, (cfg.to_dict(),))
    else:
        torch.set_num_threads(cpus)
    times = []
    try:
        for rnd in range(1, cfg.num_server_rounds + 1):
            t0 = time.perf_counter()
            if pool is None:
                parts = [floor.weighted_sum(state, rnd, pids)]
            else:
                parts = pool.map(_worker_round, [(state, rnd, pids[i::cpus])
                                                 for i in range(cpus) if pids[i::cpus]])
            n = sum(p[1] for p in parts)
            for k in state:
                if state[k].is_floating_point():
                    state[k] = state[k] + sum(p[0][k] for p in parts) / n
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.close()
            pool.join()
    return times


# ---------------------------------------------------------------- fedpers (b)
def _probe_mod(msg, context, call_next):
    """A client mod (``--probe``) that notes, per call, what the worker looks like."""
    import torch

    out = call_next(msg, context)
    path = os.environ.get(PROBE_ENV) or str(Path(tempfile.gettempdir())
                                            / "fedpers-overhead-probe.jsonl")
    row = {"pid": os.getpid(), "nice": os.getpriority(os.PRIO_PROCESS, 0),
           "torch_threads": torch.get_num_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "type": msg.metadata.message_type,
           "context_bytes": len(pickle.dumps(context)),
           "state_bytes": len(pickle.dumps(context.state)),
           "message_in_bytes": len(pickle.dumps(msg)),
           "message_out_bytes": len(pickle.dumps(out))}
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return out


class _CpuClock:
    """This process's CPU seconds (all threads: user + system) sampled every 20 ms, to
    read the driver's CPU time at the MLflow round stamps. On a 2-core machine the
    driver's CPU is taken from the Ray workers' training, so it is the overhead to cut."""

    def __init__(self) -> None:
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = os.times()
            self.samples.append((time.time(), t.user + t.system))
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, stamp: float) -> float:
        """CPU seconds at wall time ``stamp`` (linear between samples)."""
        import bisect

        i = bisect.bisect_left(self.samples, (stamp, -1.0))
        if i == 0:
            return self.samples[0][1]
        if i == len(self.samples):
            return self.samples[-1][1]
        (t0, c0), (t1, c1) = self.samples[i - 1], self.samples[i]
        return c0 + (c1 - c0) * (stamp - t0) / max(t1 - t0, 1e-9)


def run_fedpers(cfg: RunConfig, cpus: int, probe: bool
                ) -> tuple[list[float], float, list[float]]:
    """Round wall seconds (rounds 2..R, from MLflow timestamps), total seconds, and the
    driver's CPU seconds in the same rounds."""
    from mlflow.tracking import MlflowClient

    from fedpers.simulation import run_simulation

    client_app = None
    if probe:
        from fedpers.client_app import build_client_app

        client_app = build_client_app([_probe_mod])
    polls = _PollTimer() if probe else None
    cpu = _CpuClock()
    t0 = time.perf_counter()
    try:
        run_id = run_simulation(cfg, run_name=f"overhead-{cfg.num_clients}", num_cpus=cpus,
                                client_app=client_app)
    finally:
        cpu.stop()
        if polls is not None:
            polls.restore()
    total = time.perf_counter() - t0
    if polls is not None:
        sweeps = polls.calls / cfg.num_clients
        print(f"[{cfg.num_clients} clients] probe: LinkState.get_message_ins {polls.calls:,} "
              f"calls ({sweeps:,.0f} polls of every node), {polls.seconds:.2f} s of "
              f"{total:.1f} s, {1e3 * polls.seconds / max(sweeps, 1):.2f} ms per poll",
              flush=True)
    hist = MlflowClient(cfg.tracking_uri).get_metric_history(run_id, "clients/selected")
    stamps = [m.timestamp / 1000.0 for m in sorted(hist, key=lambda m: m.step)]
    if len(stamps) != cfg.num_server_rounds:
        raise RuntimeError(f"expected {cfg.num_server_rounds} rounds in MLflow, "
                           f"found {len(stamps)}")
    cpu_at = [cpu.at(t) for t in stamps]
    return ([b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)], total,
            [b - a for a, b in zip(cpu_at[:-1], cpu_at[1:], strict=True)])


class _PollTimer:
    """``--probe``: time the Simulation Engine's per-node polling of the LinkState.

    ``add_messages_to_queue`` (flwr vce_api) calls ``get_message_ins`` for every node
    every 0.1 s, and each call scans every stored instruction message.
    """

    def __init__(self) -> None:
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

        self.cls = InMemoryLinkState
        self.orig = InMemoryLinkState.get_message_ins
        self.calls, self.seconds = 0, 0.0
        orig = self.orig

        def timed(state, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return orig(state, *args, **kwargs)
            finally:
                self.calls += 1
                self.seconds += time.perf_counter() - t0

        InMemoryLinkState.get_message_ins = timed

    def restore(self) -> None:
        self.cls.get_message_ins = self.orig


def _summarise_probe(path: Path) -> str:
    if not path.is_file():
        return "probe: no rows (did the workers see the environment variable?)"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    train = [r for r in rows if r["type"] == "train"] or rows

    def span(key: str) -> str:
        vals = sorted({r[key] for r in train}, key=str)
        return ", ".join(map(str, vals))

    return (f"probe ({len(rows)} calls, {len({r['pid'] for r in rows})} worker pids): "
            f"nice {span('nice')}; torch threads {span('torch_threads')}; "
            f"OMP_NUM_THREADS {span('omp_num_threads')}; per train call: Context "
            f"{statistics.mean(r['context_bytes'] for r in train):,.0f} B (state "
            f"{statistics.mean(r['state_bytes'] for r in train):,.0f} B), message in "
            f"{statistics.mean(r['message_in_bytes'] for r in train):,.0f} B, out "
            f"{statistics.mean(r['message_out_bytes'] for r in train):,.0f} B (pickled)")


# ---------------------------------------------------------------- main
def _mean_after(times: list[float], first: int) -> float:
    """Mean of ``times[first:]``."""
    kept = times[first:]
    return statistics.mean(kept) if kept else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,50,200",
                    help="clients per round, comma-separated (each is also num-clients)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="first rounds left out")
    ap.add_argument("--epochs", type=int, default=1, help="local epochs")
    ap.add_argument("--samples", type=int, default=250,
                    help="max-samples-per-client (80%% of them train); 0: no cap, the "
                         "whole training set is spread over the clients")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                    help="cores for both (a) and (b)")
    ap.add_argument("--task", default="fmnist")
    ap.add_argument("--floors", default=",".join(FLOORS), help="threads, procs or both")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra run-config keys for (b) only (e.g. a stateful method)")
    ap.add_argument("--probe", action="store_true",
                    help="(b): record worker niceness, threads and Context sizes per call")
    ap.add_argument("--pack", action="store_true",
                    help="(b) sends one message per Ray worker and round: virtual-nodes = "
                         "--cpus, clients-per-call = the size / --cpus, rounded up")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure every size this many times, (a) then (b) each time, and "
                         "summarise the ratios (this machine drifts between runs)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: sizes 2,3, 3 rounds, 1 warm-up, 40 samples")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds, args.warmup, args.samples = "2,3", 3, 1, 40
    sizes = [int(s) for s in args.sizes.split(",")]
    floors = [f for f in args.floors.split(",") if f]
    bad = [f for f in floors if f not in FLOORS]
    if bad or not floors:
        ap.error(f"--floors: unknown {bad}; valid: {', '.join(FLOORS)}")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.warmup < 1 or args.rounds < args.warmup + 2:
        ap.error("need --warmup >= 1 (round 1 of (b) has no start stamp) and --rounds >= "
                 "--warmup + 2 (the last round of (b) evaluates)")
    import torch

    from fedpers.data import TASKS

    if TASKS[args.task].kind != "classification":
        ap.error(f"--task {args.task!r}: the floor trains classification tasks only")
    extra = parse_set_args(args.set)
    # timed rounds: warmup+1 .. rounds-1 (floor: indices warmup..rounds-2 of its list;
    # fedpers: gaps between consecutive rounds, the gap into round r at index r-2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedpers-overhead-") as tmp:
        probe_path = Path(tmp) / "probe.jsonl"
        os.environ[PROBE_ENV] = str(probe_path)
        for rep, n in ((r, n) for r in range(1, args.repeat + 1) for n in sizes):
            base = {"task": args.task, "num-clients": n, "fraction-train": 1.0,
                    "num-server-rounds": args.rounds, "local-epochs": args.epochs,
                    "partition": "iid", "max-samples-per-client": args.samples,
                    "eval-every": args.rounds + 1, "fraction-evaluate": 1.0 / n,
                    "device": "cpu", "tracking-uri": f"sqlite:///{tmp}/mlflow.db",
                    "experiment": "overhead"}
            cfg = parse_run_config(base)
            floor_s = {}
            for mode in floors:
                times = run_floor(cfg, mode, args.cpus)
                floor_s[mode] = _mean_after(times[:-1], args.warmup)
            packed = ({"virtual-nodes": min(args.cpus, n),
                       "clients-per-call": -(-n // min(args.cpus, n))} if args.pack else {})
            fl_times, total, fl_cpu = run_fedpers(
                parse_run_config({**base, **packed, **extra}), args.cpus, args.probe)
            fed_s = _mean_after(fl_times[:-1], args.warmup - 1)
            drv_s = _mean_after(fl_cpu[:-1], args.warmup - 1)
            rows.append((n, rep, floor_s, fed_s, drv_s))
            print(f"[{n} clients, run {rep}] floor {floor_s} s/round, fedpers {fed_s:.4g} s/round "
                  f"(driver CPU {drv_s:.3g} s/round), fedpers run {total:.1f} s in all",
                  flush=True)
        probe = _summarise_probe(probe_path) if args.probe else ""
    # what the clients really hold (the cap binds only below the data set's share)
    from fedpers.data import DataSpec, load_federated

    def held_rows(n: int) -> str:
        held = [c.num_train for c in load_federated(DataSpec.from_config(
            cfg.replace(**{"num-clients": n}))).clients]
        return f"{sum(held) / len(held):.0f} (at {n} clients: {min(held)}-{max(held)})"

    train_rows = ", ".join(held_rows(n) for n in sizes)
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs seen, --cpus {args.cpus}; torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads in this process), Python "
          f"{platform.python_version()}; task {args.task}, iid, {train_rows} train rows per "
          f"client, {args.epochs} local epoch(s), batch {cfg.batch_size}, lr {cfg.lr}, "
          f"momentum {cfg.momentum}; {args.rounds} rounds, timed rounds "
          f"{args.warmup + 1}-{args.rounds - 1}; (b) extra keys: {extra or 'none'}"
          + ("; (b) packed: virtual-nodes = --cpus, clients-per-call = size / --cpus"
             if args.pack else ""))
    if probe:
        print(probe)
    head = " | ".join(f"(a) {m} s/round" for m in floors)
    ratios = " | ".join(f"(b)/(a) {m}" for m in floors)
    run_col = " run |" if args.repeat > 1 else ""
    print(f"\n| clients per round |{run_col} {head} | (b) fedpers s/round | {ratios} "
          f"| (b) driver CPU s/round | driver ms per client |")
    print("|---:|" + "---:|" * (2 * len(floors) + 3 + (args.repeat > 1)))
    for n, rep, floor_s, fed_s, drv_s in sorted(rows, key=lambda r: (sizes.index(r[0]), r[1])):
        cells = " | ".join(f"{floor_s[m]:.4g}" for m in floors)
        rat = " | ".join(f"{fed_s / floor_s[m]:.2f}" for m in floors)
        run = f" {rep} |" if args.repeat > 1 else ""
        print(f"| {n} |{run} {cells} | {fed_s:.4g} | {rat} | {drv_s:.3g} | "
              f"{1e3 * drv_s / n:.1f} |")
    if args.repeat > 1:
        print()
        for n in sizes:
            for m in floors:
                got = [fed_s / floor_s[m] for k, _, floor_s, fed_s, _ in rows if k == n]
                print(f"{n} clients per round, (b)/(a) {m} over {len(got)} runs: mean "
                      f"{sum(got) / len(got):.2f}, min {min(got):.2f}, max {max(got):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
