"""``fedpers bench``: run (or resume) a benchmark sweep as one MLflow parent run with a
child run per variant x seed.

``fedpers bench benchmarks/NAME`` runs every variant x seed through
:func:`fedpers.simulation.run_simulation` (the path of ``fedpers run``), each as a
child of one MLflow parent run. A sweep that crashed or was interrupted resumes:
finished children are found by their config digest and not run again, and the
parent is found by the benchmark name and the hash of the resolved sweep. Finished
runs of the benchmark's other sweeps (e.g. fewer seeds, a subset of variants) with a
planned config are adopted instead of run again. The parent's description in
MLflow's UI says what the sweep runs and how far it got.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpers.bench_definition import DEFINITION_FILE, Benchmark, load_benchmark
from fedpers.bench_plan import PlannedRun, default_experiment, plan_runs, sweep_hash
from fedpers.bench_progress import Progress, redirect_logging, watch_rounds
from fedpers.bench_tags import (
    SWEEP_NOTE_HEAD,
    TAG_BENCH,
    TAG_DIGEST,
    TAG_HASH,
    TAG_NOTE,
    TAG_PARENT,
    TAG_QUICK,
    TAG_REFERENCE_FRACTION,
    TAG_REFERENCES,
    TAG_RUN_NAME,
    TAG_SEED,
    TAG_SEEDS,
    TAG_TARGET,
    TAG_VARIANT,
    TAG_VARIANTS,
    child_runs,
    find_parent,
    quote_tag,
)
from fedpers.tracking import Tracker, ui_url
from fedpers.tracking_store import ensure_experiment, resolve_tracking_uri

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    """What one ``fedpers bench`` call did; run ids are MLflow run ids."""

    parent_run_id: str
    experiment: str
    tracking_uri: str
    ran: tuple[str, ...]
    reused: tuple[str, ...]
    failed: tuple[str, ...]


def _reference_tags(bench: Benchmark) -> dict[str, str]:
    if not bench.references:
        return {}
    return {TAG_REFERENCES: json.dumps(dict(bench.references), separators=(",", ":")),
            TAG_REFERENCE_FRACTION: repr(bench.reference_fraction)}


def _open_parent(bench: Benchmark, runs: tuple[PlannedRun, ...], digest: str, quick: bool,
                 experiment: str, uri: str) -> tuple[Any, str, str]:
    client = Tracker.connect(uri, create=True)
    exp_id = ensure_experiment(client, resolve_tracking_uri(uri), experiment)
    parent = find_parent(client, exp_id, bench.name, digest)
    if parent is not None:
        logger.info("resuming benchmark %s: parent run %s", bench.name, parent)
        client.set_terminated(parent, status="RUNNING")
        # how the report compares variants is not part of what runs: kept up to date
        for key, value in _reference_tags(bench).items():
            client.set_tag(parent, key, value)
        return client, exp_id, parent
    tags = {TAG_BENCH: bench.name, TAG_HASH: digest, TAG_QUICK: str(quick).lower(),
            TAG_VARIANTS: ",".join(dict.fromkeys(r.variant for r in runs)),
            TAG_SEEDS: ",".join(str(s) for s in sorted({r.seed for r in runs})),
            **_reference_tags(bench)}
    if bench.target_accuracy is not None:
        tags[TAG_TARGET] = repr(bench.target_accuracy)
    name = f"{bench.name} (quick)" if quick else bench.name
    tracker = Tracker.start(uri, experiment, run_name=name, tags=tags)
    definition = bench.folder / DEFINITION_FILE
    tracker.log_file(definition)
    tracker.log_json({r.run_name: r.cfg.to_dict() for r in runs}, "sweep.json")
    logger.info("benchmark %s: parent run %s in experiment %r", bench.name, tracker.run_id,
                experiment)
    return client, exp_id, tracker.run_id


def _utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def sweep_note(bench: Benchmark, runs: tuple[PlannedRun, ...], quick: bool, parent: str,
               uri: str, status: str) -> str:
    """The parent's description while the sweep runs and after it ends (Markdown)."""
    seeds = sorted({r.seed for r in runs})
    variants = list(dict.fromkeys(r.variant for r in runs))
    return (f"{SWEEP_NOTE_HEAD}**{bench.name}**{' (quick)' if quick else ''}: "
            f"{len(variants)} variants ({', '.join(f'`{v}`' for v in variants)}) x "
            f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {len(runs)} runs.\n\n"
            f"{status}\n\nChild runs are named `variant/seed=N` and tagged "
            f"`{TAG_VARIANT}` (group the runs table by it). The summary table and the "
            f"paired comparisons come here with:\n\n"
            f"```\nfedpers report {parent} --tracking-uri {uri}\n```\n")


def _has_report(client: Any, parent: str) -> bool:
    """Whether the parent's description is a report's (not this sweep's own note)."""
    note = client.get_run(parent).data.tags.get(TAG_NOTE, "")
    return bool(note) and not note.startswith(SWEEP_NOTE_HEAD)


def _finished_children(client: Any, exp_id: str, parent: str) -> dict[tuple[str, str], str]:
    """(variant, config digest) -> run id of finished children; stale ones marked KILLED."""
    done: dict[tuple[str, str], str] = {}
    for run in child_runs(client, exp_id, parent):
        key = (run.data.tags.get(TAG_VARIANT, ""), run.data.tags.get(TAG_DIGEST, ""))
        if run.info.status == "FINISHED":
            done.setdefault(key, run.info.run_id)
        elif run.info.status == "RUNNING":
            logger.warning("child run %s (%s) was left running by an interrupted sweep; "
                           "marking it KILLED and running it again", run.info.run_id,
                           run.data.tags.get(TAG_RUN_NAME, "?"))
            client.set_terminated(run.info.run_id, status="KILLED")
    return done


def _adopt_children(client: Any, exp_id: str, bench: Benchmark, parent: str,
                    runs: tuple[PlannedRun, ...], done: dict[tuple[str, str], str]) -> int:
    """Move finished runs of this benchmark's *other* sweeps (e.g. the same sweep with
    fewer seeds) under ``parent`` where their variant and config digest are planned and
    not yet done here; add them to ``done``. Returns how many were adopted.

    A run's config digest covers every run-config key (seed included), so an adopted run
    is the run this sweep would make. The earlier sweep's parent loses the run.
    """
    wanted = {(r.variant, r.digest) for r in runs} - set(done)
    if not wanted:
        return 0
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{TAG_BENCH}` = '{quote_tag(bench.name)}' and "
                                f"attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"], max_results=10_000)
    adopted: dict[str, int] = {}
    for run in found:
        tags = run.data.tags
        key = (tags.get(TAG_VARIANT, ""), tags.get(TAG_DIGEST, ""))
        old = tags.get(TAG_PARENT)
        if key not in wanted or not old or old == parent:
            continue
        client.set_tag(run.info.run_id, TAG_PARENT, parent)
        done[key] = run.info.run_id
        wanted.discard(key)
        adopted[old] = adopted.get(old, 0) + 1
    for old, n in adopted.items():
        logger.info("benchmark %s: reusing %d finished run(s) of the earlier sweep %s "
                    "(moved under %s)", bench.name, n, old, parent)
    return sum(adopted.values())


def _run_child(run: PlannedRun, bench: Benchmark, parent: str, client: Any,
               progress: Progress, verbose: bool, resources: Any = None,
               shared_ray: _SweepRay | None = None) -> str:
    from fedpers.simulation import run_simulation  # imports Flower and Ray

    if shared_ray is not None:
        shared_ray.ensure()

    tags = {TAG_PARENT: parent, TAG_BENCH: bench.name, TAG_VARIANT: run.variant,
            TAG_SEED: str(run.seed), TAG_DIGEST: run.digest}
    tracker = Tracker.start(run.cfg.tracking_uri, run.cfg.experiment, run_name=run.run_name,
                            tags=tags)
    progress.bar.set_postfix_str(run.run_name)
    logger.info("running %s (child run %s)", run.run_name, tracker.run_id)
    cfg = run.cfg.replace(**{"mlflow-run-id": tracker.run_id})
    with watch_rounds(client, tracker.run_id, progress.at_round):
        return run_simulation(cfg, run_name=run.run_name, verbose=verbose,
                              resources=resources)


class _SweepRay:
    """The sweep's one Ray (:func:`fedpers.simulation.sweep_ray`), started by its first
    run that needs it and stopped when ``stack`` closes."""

    def __init__(self, stack: ExitStack, resources: Any, verbose: bool) -> None:
        self.stack, self.resources, self.verbose = stack, resources, verbose
        self.started = False

    def ensure(self) -> None:
        if not self.started:
            from fedpers.simulation import sweep_ray  # imports Ray

            self.stack.enter_context(sweep_ray(self.resources, verbose=self.verbose))
            self.started = True


def run_benchmark(folder: str | Path, *, seeds: int | None = None, rounds: int | None = None,
                  quick: bool = False, experiment: str = "", tracking_uri: str = "",
                  progress: bool = True, verbose: bool = False,
                  resources: Any = None, variants: tuple[str, ...] = ()) -> SweepResult:
    """Run (or resume) every variant x seed of a benchmark as MLflow child runs.

    Parameters
    ----------
    folder
        The benchmark folder.
    seeds
        Run the first ``seeds`` listed seeds (``0 .. seeds-1`` if fewer are listed).
    rounds
        Override ``num-server-rounds`` of every run.
    quick
        Small budget (:data:`~fedpers.bench_definition.QUICK_DEFAULTS`, then
        ``[quick]``), first seed only unless ``seeds`` is given.
    experiment
        MLflow experiment ('' = :func:`~fedpers.bench_plan.default_experiment`).
    tracking_uri
        MLflow store ('' = ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
    progress
        Show a progress bar with the estimated time left.
    verbose
        Flower's verbose logging.
    resources
        Where the clients run (:class:`fedpers.simulation.Resources`; default: a local
        Ray with every CPU, one per client). Not part of a run's identity.
    variants
        Shell globs: only the matching variants run (a sweep of its own, whose finished
        runs a later, larger sweep reuses).

    Returns
    -------
    SweepResult
        The parent run id and which child runs ran, were reused or failed.
    """
    bench = load_benchmark(folder)
    uri = resolve_tracking_uri(tracking_uri)
    experiment = experiment or default_experiment(bench, quick)
    runs = plan_runs(bench, seeds=seeds, rounds=rounds, quick=quick, experiment=experiment,
                     tracking_uri=uri, variants=variants)
    digest = sweep_hash(bench, runs, quick)
    client, exp_id, parent = _open_parent(bench, runs, digest, quick, experiment, uri)
    done = _finished_children(client, exp_id, parent)
    _adopt_children(client, exp_id, bench, parent, runs, done)
    reused_idx = {i for i, r in enumerate(runs) if (r.variant, r.digest) in done}
    n_variants = len({r.variant for r in runs})
    logger.info("benchmark %s: %d runs (%d variants x %d seeds), %d already finished",
                bench.name, len(runs), n_variants, len(runs) // n_variants,
                len(reused_idx))
    # nothing left to run and a report written: its summary stays the description
    keep_note = len(reused_idx) == len(runs) and _has_report(client, parent)
    if not keep_note:
        client.set_tag(parent, TAG_NOTE, sweep_note(
            bench, runs, quick, parent, uri,
            f"Running since {_utc_now()}: {len(reused_idx)} of {len(runs)} runs done "
            f"before."))
    ran, failed = [], []
    bar = Progress(runs, reused_idx, progress)
    started = time.perf_counter()
    try:
        with redirect_logging(progress), ExitStack() as stack:
            shared_ray = _SweepRay(stack, resources, verbose)
            for i, run in enumerate(runs):
                if i in reused_idx:
                    continue
                try:
                    ran.append(_run_child(run, bench, parent, client, bar, verbose,
                                          resources, shared_ray=shared_ray))
                except Exception:  # noqa: BLE001 - one failed run must not stop the sweep
                    logger.exception("run %s failed; the sweep goes on", run.run_name)
                    failed.append(run.run_name)
                bar.run_done(run)
    except BaseException:
        client.set_terminated(parent, status="KILLED")
        raise
    finally:
        bar.close()
    client.set_terminated(parent, status="FAILED" if failed else "FINISHED")
    if not keep_note:
        client.set_tag(parent, TAG_NOTE, sweep_note(
            bench, runs, quick, parent, uri,
            f"Finished {_utc_now()}: {len(ran)} ran, {len(reused_idx)} reused, "
            f"{len(failed)} failed" + (f" ({', '.join(failed)})" if failed else "") + "."))
    logger.info("in MLflow's UI (mlflow ui --backend-store-uri %s): %s", uri,
                ui_url("http://127.0.0.1:5000", exp_id, parent))
    logger.info("benchmark %s finished in %.0f s: %d ran, %d reused, %d failed",
                bench.name, time.perf_counter() - started, len(ran), len(reused_idx),
                len(failed))
    return SweepResult(parent_run_id=parent, experiment=experiment, tracking_uri=uri,
                       ran=tuple(ran), reused=tuple(done[(runs[i].variant, runs[i].digest)]
                                                    for i in sorted(reused_idx)),
                       failed=tuple(failed))
