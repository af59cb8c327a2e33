"""The ``fedpers`` command line.

Subcommands: ``run`` (one experiment on Flower's Simulation Engine), ``bench`` (every
variant x seed of a benchmark), ``report`` (tables and plots of a sweep), ``detect``
(score rows with a trained anomaly detector), ``keys`` (every run-config key) and
``sync-tracking`` (send records saved during an MLflow outage). :func:`build_parser`
holds each one's help and examples; :func:`main` runs one and maps errors to exit
statuses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from fedpers import console
from fedpers.config import (
    ConfigError,
    describe_keys,
    load_config_file,
    parse_run_config,
    parse_set_args,
)

logger = logging.getLogger("fedpers")

SUMMARY_KEYS = [
    ("eval/global_accuracy", "global accuracy", "{:.4f}"),
    ("eval/client_accuracy_mean", "client accuracy (mean)", "{:.4f}"),
    ("eval/client_accuracy_p10", "client accuracy (p10)", "{:.4f}"),
    ("eval/global_auroc", "global AUROC", "{:.4f}"),
    ("eval/global_auprc", "global AUPRC", "{:.4f}"),
    ("eval/global_f1", "global F1", "{:.4f}"),
    ("eval/client_auroc_mean", "client AUROC (mean)", "{:.4f}"),
    ("train/loss", "train loss (last round)", "{:.4f}"),
    ("comm/bytes_up_total", "bytes up (total)", "{:,.0f}"),
    ("comm/bytes_down_total", "bytes down (total)", "{:,.0f}"),
]


class _StdoutHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stdout`` is when a record is emitted (not
    the stream of the first call: ``main`` may run more than once in one process)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    """Our progress lines on stdout; Flower's, Ray's and MLflow's only as
    :func:`fedpers.console.configure` allows (their warnings and errors always; their
    INFO lines, lifecycle lines and known warnings with ``-v``)."""
    if not logger.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s fedpers %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    console.configure(verbose)


def resolve_config(config: str | None, sets: list[str] | None, experiment: str | None,
                   tracking_uri: str | None):
    raw: dict = load_config_file(config) if config else {}
    raw.update(parse_set_args(sets or []))
    if experiment:
        raw["experiment"] = experiment
    if tracking_uri:
        raw["tracking-uri"] = tracking_uri
    try:
        return parse_run_config(raw)
    except ConfigError as exc:
        if not config:
            raise
        where = f"config file {config!r}" + (" and --set" if sets else "")
        raise ConfigError(f"{exc} (settings from {where})") from exc


def print_summary(run_id: str, tracking_uri: str) -> None:
    from fedpers.tracking import Tracker, ui_url
    from fedpers.tracking_store import TrackingError

    try:
        client = Tracker.connect(tracking_uri)
    except TrackingError as exc:  # the store went away during the run
        print(f"\nno summary: {exc}\nrun id: {run_id} (if its records were saved to a "
              f"fallback file, the warning above says how to send them)")
        return
    run = client.get_run(run_id)
    metrics = run.data.metrics
    rounds = max((m.step for m in client.get_metric_history(run_id, "comm/bytes_up")),
                 default=0)
    rows = [(label, fmt.format(metrics[key])) for key, label, fmt in SUMMARY_KEYS
            if key in metrics]
    width = max(len(r[0]) for r in rows) if rows else 10
    print()
    print(f"{'metric'.ljust(width)} | final (round {rounds})")
    print(f"{'-' * width}-|-{'-' * 20}")
    for label, value in rows:
        print(f"{label.ljust(width)} | {value}")
    print()
    print(f"experiment: {run.info.experiment_id}   run id: {run_id}")
    print(f"open it with: {console.command('mlflow')} ui --backend-store-uri {tracking_uri}")
    print(f"then: {ui_url('http://127.0.0.1:5000', run.info.experiment_id, run_id)}")


def interrupted_message(exc, tracking_uri: str) -> str:
    """One line: what a signal left of the run (a ``RunInterrupted``) and how to go on."""
    from fedpers.interrupt import signal_name

    head = f"interrupted by {signal_name(exc.signum)}: MLflow run {exc.run_id} is KILLED"
    if exc.checkpoint_round:
        return (f"{head}; resume it from its checkpoint of round {exc.checkpoint_round} "
                f"with: {console.command('fedpers')} run --resume {exc.run_id} "
                f"--tracking-uri {tracking_uri}")
    return (f"{head}; it has no checkpoint to resume from (set checkpoint-every to make "
            f"runs resumable): run it again")


def cmd_run(args: argparse.Namespace) -> int:
    from fedpers.checkpoint import CheckpointError, resume_config
    from fedpers.interrupt import RunInterrupted
    from fedpers.simulation import run_simulation
    from fedpers.tracking_store import TrackingError, resolve_tracking_uri

    try:
        resources = _resources(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.resume:
        if args.config or args.set or args.experiment:
            print("error: --resume continues a run with its own config; drop --config, "
                  "--set and --experiment", file=sys.stderr)
            return 2
        try:
            cfg = resume_config(args.tracking_uri or "", args.resume)
        except (CheckpointError, TrackingError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        logger.info("resuming MLflow run %s", args.resume)
    else:
        cfg = resolve_config(args.config, args.set, args.experiment, args.tracking_uri)
        cfg = cfg.replace(**{"tracking-uri": resolve_tracking_uri(cfg.tracking_uri)})
    logger.info("running %s: %s", cfg.task, " ".join(f"{k}={v}" for k, v in
                                                        cfg.to_dict().items()))
    try:
        run_id = run_simulation(cfg, run_name=args.run_name or "", verbose=args.verbose,
                                resources=resources)
    except (TrackingError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:  # SIGINT / SIGTERM: the run is KILLED, resumable
        print(interrupted_message(exc, cfg.tracking_uri), file=sys.stderr)
        return exc.exit_code
    print_summary(run_id, cfg.tracking_uri)
    print(f"run id: {run_id}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from fedpers.detect import DetectError, Detector, read_input, write_output

    rows = read_input(args.input, header=args.header)  # bad input fails before any work
    detector = Detector.from_run(args.run, args.tracking_uri or "", client=args.client,
                                 model_dir=args.model_dir or "")
    try:
        scores, flags = detector.score(rows)
    except DetectError as exc:  # e.g. the wrong number of columns: name the file too
        raise DetectError(f"{args.input}: {exc}") from exc
    out = Path(args.output) if args.output else Path(args.input).with_suffix(".scores.csv")
    write_output(out, scores, flags)
    print(f"{len(scores)} rows scored, {int(flags.sum())} flagged as anomalies "
          f"({detector.source}, threshold {detector.threshold:.6g}); written to {out}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from fedpers.keydoc import find_key, format_key, format_keys, keys_markdown

    infos = describe_keys()
    if args.markdown:
        print(keys_markdown(infos))
    elif args.name:
        print(format_key(find_key(args.name, infos)))  # ConfigError: close matches
    else:
        print(format_keys(infos))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from fedpers.bench_sweep import run_benchmark

    try:
        resources = _resources(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from fedpers.interrupt import RunInterrupted, signal_name

    try:
        res = run_benchmark(args.folder, seeds=args.seeds, rounds=args.rounds,
                            quick=args.quick, experiment=args.experiment or "",
                            tracking_uri=args.tracking_uri or "",
                            progress=not args.no_progress, verbose=args.verbose,
                            resources=resources,
                            variants=tuple(v for v in (args.variants or "").split(",") if v))
    except RunInterrupted as exc:  # the run in progress is KILLED, finished ones are kept
        print(f"interrupted by {signal_name(exc.signum)}: the sweep stopped; run the same "
              f"command again to continue it (finished runs are reused)", file=sys.stderr)
        return exc.exit_code
    print(f"benchmark parent run: {res.parent_run_id} (experiment {res.experiment!r}): "
          f"{len(res.ran)} ran, {len(res.reused)} reused, {len(res.failed)} failed")
    for name in res.failed:
        print(f"failed: {name} (rerun the same command to retry it)", file=sys.stderr)
    print(f"report: {console.command('fedpers')} report {res.parent_run_id} "
          f"--tracking-uri {res.tracking_uri}")
    return 1 if res.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedpers.report import ReportError, make_report
    from fedpers.tracking_store import resolve_tracking_uri

    if (args.target is None) == (args.from_csv is None):
        print("error: name an experiment or parent run id, or give --from-csv DIR "
              "(not both)", file=sys.stderr)
        return 2
    uri = "" if args.from_csv else resolve_tracking_uri(args.tracking_uri or "")
    try:
        rep = make_report(args.target, out=args.out, tracking_uri=uri,
                          target_accuracy=args.target_accuracy, reference=args.reference,
                          last=args.last, best=args.best, from_csv=args.from_csv)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(rep.table)
    if rep.comparisons:
        print(rep.comparison_md)
    print("written: " + ", ".join(str(f) for f in rep.files))
    if uri:
        print(f"open it with: {console.command('mlflow')} ui --backend-store-uri {uri}")
    return 0


def cmd_sync_tracking(args: argparse.Namespace) -> int:
    from fedpers.tracking_fallback import TrackingOutboxError, replay
    from fedpers.tracking_outbox import DEFAULT_FALLBACK_DIR, ENV_FALLBACK_DIR

    path = args.path or os.environ.get(ENV_FALLBACK_DIR) or DEFAULT_FALLBACK_DIR
    if not args.path and not Path(path).exists():
        print(f"nothing to send: {path} does not exist")
        return 0
    try:
        res = replay(path, tracking_uri=args.tracking_uri or None)
    except TrackingOutboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not res.files:
        print(f"nothing to send: no fallback records under {path}")
    for (uri, run_id), count in sorted(res.sent.items()):
        print(f"sent {count} records of run {run_id} to {uri}")
    if res.refused:
        print(f"{res.refused} records were refused by the store (see the log above); they "
              f"are kept in refused.jsonl beside their file", file=sys.stderr)
        return 1
    return 0


def _add_resource_args(parser: argparse.ArgumentParser) -> None:
    """Where the simulated clients run (fedpers.simulation.Resources); never the results."""
    g = parser.add_argument_group("resources (where clients run; results do not change)")
    g.add_argument("--num-cpus", type=int,
                   help="CPUs of the local Ray (default: all of this machine's)")
    g.add_argument("--client-cpus", type=float, default=1.0,
                   help="CPUs (torch threads) per simulated client (default 1)")
    g.add_argument("--client-gpus", type=float,
                   help="share of one GPU per client, e.g. 0.25 (default: 1/k with CUDA)")
    g.add_argument("--ray-address",
                   help="join this Ray cluster ('auto', 'HOST:6379') instead of a local Ray")


def _resources(args: argparse.Namespace):
    """The Resources of the parsed arguments; ValueError names the bad option."""
    from fedpers.simulation import Resources

    return Resources(num_cpus=args.num_cpus, client_cpus=args.client_cpus,
                     client_gpus=args.client_gpus, ray_address=args.ray_address or "")


DESCRIPTION = """\
fedpers: federated learning research on Flower's Simulation Engine (PyTorch, Ray):
strategies, personalisation, compression, client selection, robustness and privacy,
every run tracked in MLflow."""

EPILOG = """\
examples:
  fedpers run --set task=digits num-clients=3 num-server-rounds=2
  fedpers bench benchmarks/quickstart --quick
  fedpers report quickstart
  fedpers keys strategy

`fedpers COMMAND --help` shows a command's options and examples; docs/ has the guides."""


def version_line() -> str:
    """``fedpers X (torch Y, flwr Z, mlflow W, Python V)``: the installed versions, read
    from package metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    deps = ", ".join(f"{name} {installed(name)}" for name in ("torch", "flwr", "mlflow"))
    return (f"fedpers {installed('fedpers')} ({deps}, "
            f"Python {'.'.join(map(str, sys.version_info[:3]))})")


def _subcommand(sub, name: str, help: str, description: str,
                examples: list[str]) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows ``description`` and ``examples`` verbatim
    (each example a ``fedpers ...`` line, ``#`` comments kept)."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedpers", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version_line(),
                   help="show the versions of fedpers, torch, flwr, mlflow and Python")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _subcommand(
        sub, "run", "run one experiment on Flower's Simulation Engine",
        "Run one federated experiment on Flower's Simulation Engine (Ray) in this\n"
        "process, log it to MLflow and print a summary and the run id. Settings are\n"
        "run-config keys (`fedpers keys` lists them): from --config, then --set.",
        ["fedpers run --set task=digits num-clients=3 num-server-rounds=2",
         "fedpers run --config configs/demo.toml --set strategy=scaffold",
         "fedpers run --set task=shuttle-ad num-clients=3 num-server-rounds=5 local-epochs=5",
         "fedpers run --resume RUN_ID   # continue a run that had checkpoint-every > 0"])
    run.add_argument("--config", help="TOML file of run-config keys")
    run.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                     help="override run-config keys (TOML values: 3, 0.1, true, 'text')")
    run.add_argument("--experiment", help="MLflow experiment name")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default ./mlflow.db)")
    run.add_argument("--run-name", help="MLflow run name")
    run.add_argument("--resume", metavar="RUN_ID",
                     help="continue this MLflow run from its last checkpoint "
                          "(checkpoint-every > 0), in the same run")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="debug logging; show the traceback of an error")
    _add_resource_args(run)
    run.set_defaults(fn=cmd_run)

    bench = _subcommand(
        sub, "bench", "run (or resume) every variant x seed of a benchmark",
        "Run every variant x seed of a benchmark folder (its benchmark.toml) under one\n"
        "MLflow parent run. Finished runs are reused, so the same command resumes an\n"
        "interrupted sweep; then `fedpers report` makes its tables and plots.",
        ["fedpers bench benchmarks/quickstart --quick   # digits, 3 clients, 2 rounds, 1 seed",
         "fedpers bench benchmarks/quickstart --seeds 2 --rounds 5",
         "fedpers bench benchmarks/personalization --variants '*-a5.0'  # a subset",
         "fedpers bench benchmarks/quickstart           # every variant x seed"])
    bench.add_argument("folder", help="benchmark folder, e.g. benchmarks/quickstart")
    bench.add_argument("--seeds", type=int, help="first N listed seeds (0..N-1 if fewer listed)")
    bench.add_argument("--rounds", type=int, help="override num-server-rounds of every run")
    bench.add_argument("--variants", metavar="GLOB[,GLOB...]",
                       help="only the variants whose names match (shell globs, comma-separated), "
                            "e.g. 'none-a5.0,*-a5.0'")
    bench.add_argument("--quick", action="store_true",
                       help="small budget (digits, 3 clients, 2 rounds, first seed)")
    bench.add_argument("--experiment", help="MLflow experiment (default: the benchmark name)")
    bench.add_argument("--tracking-uri", help="MLflow tracking URI (default ./mlflow.db)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.add_argument("-v", "--verbose", action="store_true",
                       help="debug logging; show the traceback of an error")
    _add_resource_args(bench)
    bench.set_defaults(fn=cmd_bench)

    rep = _subcommand(
        sub, "report", "tables and plots of a benchmark sweep from MLflow",
        "Tables (Markdown, CSV) and plots of a benchmark sweep recorded in MLflow, with\n"
        "paired comparisons against a reference variant; or recompute them from the\n"
        "CSV files of an earlier report, without MLflow (--from-csv).",
        ["fedpers report quickstart                 # writes reports/quickstart/",
         "fedpers report quickstart --reference iid --last 3",
         "fedpers report --from-csv reports/quickstart"])
    rep.add_argument("target", metavar="EXPERIMENT_OR_PARENT_RUN", nargs="?",
                     help="MLflow experiment (its latest sweep) or parent run id")
    rep.add_argument("--out", help="output folder (default reports/<benchmark>; "
                                   "with --from-csv, that folder)")
    rep.add_argument("--target", dest="target_accuracy", type=float,
                     help="target accuracy (default: the benchmark's target-accuracy)")
    rep.add_argument("--tracking-uri", help="MLflow tracking URI (default ./mlflow.db)")
    rep.add_argument("--reference", metavar="VARIANT",
                     help="compare every other variant with this one (default: the "
                          "benchmark's reference tables)")
    which = rep.add_mutually_exclusive_group()
    which.add_argument("--last", type=int, metavar="K",
                       help="figures: mean of each run's last K evaluated rounds "
                            "(default: the final round)")
    which.add_argument("--best", action="store_true",
                       help="figures: each metric's best round (optimistic)")
    rep.add_argument("--from-csv", metavar="DIR",
                     help="recompute the report from DIR's runs.csv, clients.csv and "
                          "report.json (written by an earlier report), without MLflow; "
                          "report.json's target, references and round selection apply "
                          "unless given (--last 1 = final round)")
    rep.set_defaults(fn=cmd_report)

    det = _subcommand(
        sub, "detect", "score rows with an anomaly detector from a run",
        "Score rows with the autoencoder and threshold an anomaly-task run (shuttle-ad,\n"
        "fmnist-ad) saved in MLflow, or with one client's own detector (--client), and\n"
        "write row,score,anomaly lines to a CSV.",
        ["fedpers detect --run RUN_ID --input rows.csv   # writes rows.scores.csv",
         "fedpers detect --run RUN_ID --input rows.npy --output scores.csv --client 0"])
    det.add_argument("--run", required=True, help="MLflow run id of an anomaly task run")
    det.add_argument("--input", required=True, help="rows to score (.csv or .npy)")
    det.add_argument("--output", help="CSV to write (default INPUT.scores.csv)")
    det.add_argument("--tracking-uri", help="MLflow tracking URI (default ./mlflow.db)")
    head = det.add_mutually_exclusive_group()
    head.add_argument("--header", dest="header", action="store_true", default=None,
                      help="the CSV's first row is a header (default: only when every cell "
                           "of it is text)")
    head.add_argument("--no-header", dest="header", action="store_false",
                      help="the CSV's first row is data (a text cell in it is an error)")
    det.add_argument("-v", "--verbose", action="store_true",
                     help="show the traceback of an error")
    det.add_argument("--client", type=int, metavar="ID",
                     help="score with this client's own detector (its personalised model "
                          "and threshold; the run needs client-model-dir)")
    det.add_argument("--model-dir", metavar="DIR",
                     help="with --client: the folder a device kept its detector in, instead "
                          "of the run's client-model-dir")
    det.set_defaults(fn=cmd_detect)

    keys = _subcommand(
        sub, "keys", "every run-config key: meaning, type, default, choices",
        "List every run-config key by component, with its meaning, type, default (as\n"
        "TOML) and valid values, or one key in full. The same facts make the tables of\n"
        "docs/configuration.md.",
        ["fedpers keys", "fedpers keys strategy",
         "fedpers keys --markdown   # the tables of docs/configuration.md"])
    keys.add_argument("name", metavar="KEY", nargs="?",
                      help="show this key in full (an unknown one lists close matches)")
    keys.add_argument("--markdown", action="store_true",
                      help="print the key tables of docs/configuration.md (Markdown)")
    keys.set_defaults(fn=cmd_keys)

    sync = _subcommand(
        sub, "sync-tracking", "send tracking records saved during an MLflow outage",
        "Send the tracking records a run saved to its fallback folder while the MLflow\n"
        "store was unreachable, in order and with their original timestamps.",
        ["fedpers sync-tracking                  # everything under ./mlflow-fallback",
         "fedpers sync-tracking mlflow-fallback --tracking-uri sqlite:///$PWD/mlflow.db"])
    sync.add_argument("path", nargs="?",
                      help="fallback folder, a run's folder in it, or one records-*.jsonl "
                           "(default $FEDPERS_TRACKING_FALLBACK_DIR, else ./mlflow-fallback)")
    sync.add_argument("--tracking-uri",
                      help="send to this store instead of the one the records name")
    sync.set_defaults(fn=cmd_sync_tracking)
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input (a config, a file, a run id, a store):
    ``main`` prints their message as one ``error:`` line and exits with status 2. Any
    other exception is a bug: its traceback is printed and the status is 1."""
    from fedpers.bench_definition import BenchmarkError
    from fedpers.checkpoint import CheckpointError
    from fedpers.data import DataError
    from fedpers.detect import DetectError
    from fedpers.devices import DeviceError
    from fedpers.report import ReportError
    from fedpers.tracking_fallback import TrackingOutboxError
    from fedpers.tracking_store import TrackingError

    return (ConfigError, BenchmarkError, CheckpointError, DataError, DetectError, DeviceError,
            ReportError, TrackingError, TrackingOutboxError)


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (a multi-line message joined with '; ')."""
    text = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the ``fedpers`` command line; return the exit status.

    0: done. 2: bad input (a config key, a data or input file, a run id, an
    unreachable store): one line ``error: ...`` on stderr, no traceback unless
    ``-v``. 1: an unexpected exception (a bug): its traceback on stderr.
    """
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    _setup_logging(verbose)
    try:
        return int(args.fn(args))
    except Exception as exc:  # noqa: BLE001  -- sorted below: bad input or a bug
        if isinstance(exc, user_errors()):
            if verbose:
                traceback.print_exc()
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__} (a bug in fedpers, or input it does "
              f"not check yet; the traceback above says where): {one_line(exc)}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
