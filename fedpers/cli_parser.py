"""The ``fedpers`` argument parser: every subcommand's options, help and examples."""

from __future__ import annotations

import argparse
import sys

from fedpers.cli_commands import (
    cmd_bench,
    cmd_detect,
    cmd_keys,
    cmd_report,
    cmd_run,
    cmd_sync_tracking,
)

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
