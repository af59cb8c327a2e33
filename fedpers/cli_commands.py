"""What each ``fedpers`` subcommand does, given its parsed arguments.

One ``cmd_*`` function per subcommand (``run``, ``bench``, ``report``, ``detect``,
``keys``, ``sync-tracking``), each returning the exit status; the parser that calls
them is :mod:`fedpers.cli_parser`, the entry point :func:`fedpers.cli.main`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fedpers import console
from fedpers.config import ConfigError, parse_run_config
from fedpers.config_files import load_config_file, parse_set_args
from fedpers.keydoc import describe_keys

logger = logging.getLogger(__name__)

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
        resources = resources_of(args)
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
    # every key's effective value (task defaults applied): with -v only
    logger.debug("running %s: %s", cfg.task, " ".join(f"{k}={v}" for k, v in
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
    from fedpers.detect import Detector
    from fedpers.detect_files import DetectError, read_input, write_output

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
        resources = resources_of(args)
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
    from fedpers.report import make_report
    from fedpers.report_data import ReportError
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


def resources_of(args: argparse.Namespace):
    """The Resources of the parsed arguments; ValueError names the bad option."""
    from fedpers.simulation import Resources

    return Resources(num_cpus=args.num_cpus, client_cpus=args.client_cpus,
                     client_gpus=args.client_gpus, ray_address=args.ray_address or "")
