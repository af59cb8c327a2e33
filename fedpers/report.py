"""Benchmark reports: tables, paired comparisons, plots and the data they come from.

``fedpers report EXPERIMENT_OR_PARENT_RUN`` takes the children of a benchmark's
parent run (the most recent parent of an experiment when given its name), groups
the finished ones by variant (tag ``fedpers.bench.variant``, else the run name),
pairs them by seed (tag ``fedpers.bench.seed``, else param ``seed``, else the
``seed=N`` of the run name) and writes into ``--out``:

- ``summary.md``: per variant, mean ± std over seeds (sample std, ddof=1; no ± for
  one seed) of the global accuracy, the client accuracy mean and 10th percentile
  (anomaly tasks, i.e. runs that logged ``eval/global_auroc``: AUROC, AUPRC, F1 at
  the global threshold, each device's AUROC and F1 at its own and at the global
  threshold, mean and p10 over devices, then the flag accuracy), total bytes up and
  down at the last round (MB = 10^6 bytes), the rounds, total bytes (up + down) and
  uplink bytes until the global accuracy first reaches the target, and
  ``time/total_s`` (total and at the target) where logged. "k/n" marks a target
  that only k of n seeds reached. Which round the accuracies come from is stated
  above every table: the final round (default), the mean of the last K evaluated
  rounds (``--last K``) or each metric's best round (``--best``, optimistic);
- with references (the benchmark's ``reference`` tables, or ``--reference VARIANT``
  for every variant against one), a second table in ``summary.md`` (and
  ``reference.csv``): each variant against its reference, the difference of global
  accuracy in points, the ratio of total uplink bytes, and the rounds, uplink bytes
  (also as a ratio to the reference's) and simulated time until the global accuracy
  first reaches ``reference-fraction`` x the reference's accuracy (mean over seeds);
- ``comparison.md`` and ``comparison.csv`` (columns
  :data:`~fedpers.report_compare.COMPARISON_FIELDS`): per variant, reference and
  metric, the paired difference (variant minus reference) over the seeds both ran,
  its mean and 95% Student-t interval, the paired t-test p-value; where the runs
  logged ``client_metrics.csv``, the Wilcoxon signed-rank test of per-client
  differences (clients paired by id within a seed, all seeds pooled; on the
  client-mean rows); both p-values also Holm-corrected over every row of the report;
  and a verdict (``better``, ``worse``, ``no detectable difference``, ``too few
  seeds`` under 3 paired seeds). The file is written, with no rows, when there is no
  reference;
- ``summary.csv``: the summary table's numbers, unrounded;
- ``runs.csv`` (one row per child run and evaluated round: variant, seed, run_id,
  round and every logged ``eval/``, ``comm/``, ``time/``, ``fairness/`` and
  ``clients/`` metric), ``clients.csv`` (per run and client: variant, seed, run_id,
  client and the client's metrics of the last evaluation round) and
  ``report.json`` (the benchmark's name, parent run, variants, task kind, reference
  fraction, and the target accuracy, references and round selection this report
  used). CSVs over 1 MB are written as ``.csv.gz``. ``fedpers report --from-csv DIR``
  recomputes every other file from these three alone, with no MLflow (``--target``,
  ``--reference``, ``--last``/``--best`` override what ``report.json`` says);
- ``accuracy_vs_round.png``, ``accuracy_vs_uplink.png`` (log x) and
  ``accuracy_vs_time.png`` (where the runs logged ``time/total_s``): mean over
  seeds with a 95% t interval band; ``client_accuracy.png`` (each client's
  accuracy, AUROC for anomaly tasks, in the last evaluation round, clients of all
  seeds pooled); ``comparison.png``, a forest plot of the paired differences.

The files are also logged as artifacts of the parent run under ``report/``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedpers.report_compare import (
    Comparison,
    compare_paired,
    comparison_table,
    reference_pairs,
    verdict_lines,
    write_comparison_csv,
)
from fedpers.report_data import (
    ANOMALY,
    ChildRun,
    ReportError,
    ReportMeta,
    read_children,
    read_data,
    resolve_source,
    task_kind,
    write_data,
)
from fedpers.report_plots import write_plots
from fedpers.report_tables import (
    Selection,
    VariantRow,
    compare_to_references,
    group_by_variant,
    markdown_table,
    reference_table,
    summarize_variant,
    write_csv,
    write_reference_csv,
)
from fedpers.tracking import Tracker

logger = logging.getLogger(__name__)

# ------------------------------------------------- the parent run in MLflow
#: the tag MLflow's UI shows as a run's description (Markdown)
DESCRIPTION_TAG = "mlflow.note.content"
#: MLflow refuses longer tag values
MAX_DESCRIPTION = 8000


def headline_metrics(rows: Sequence[VariantRow]) -> dict[str, float]:
    """Per variant, the summary table's headline figures as parent-run metrics (so the
    runs table shows them): ``<variant>/global_accuracy_mean`` and ``_std``,
    ``<variant>/client_accuracy_mean``, ``<variant>/client_accuracy_p10``,
    ``<variant>/global_auroc_mean`` (anomaly tasks), ``<variant>/bytes_up_total``
    and ``<variant>/seeds``. Figures that are NaN (not logged) are left out."""
    out: dict[str, float] = {}
    for r in rows:
        figures = {"global_accuracy_mean": r.acc[0], "global_accuracy_std": r.acc[1],
                   "client_accuracy_mean": r.client_mean[0],
                   "client_accuracy_p10": r.client_p10[0], "bytes_up_total": r.bytes_up,
                   "seeds": float(r.n)}
        if "eval/global_auroc" in r.anomaly:
            figures["global_auroc_mean"] = r.anomaly["eval/global_auroc"][0]
        out.update({f"{r.variant}/{k}": float(v) for k, v in figures.items()
                    if not math.isnan(v)})
    return out


def parent_description(meta: ReportMeta, table: str, comparisons: Sequence[Comparison],
                       folder: Path) -> str:
    """The parent run's description (Markdown): the summary table and the verdicts,
    cut to what MLflow accepts (the full files are the run's ``report/`` artifacts)."""
    head = (f"**Benchmark `{meta.name}`**: {len(meta.variants)} variants. Report "
            f"written to `{folder}` and logged under the artifacts `report/` "
            f"(`summary.md`, `comparison.md`, plots).\n\n")
    verdicts = verdict_lines(comparisons)
    text = head + table + ("\n**Paired comparisons** (variant − reference, mean and 95% "
                           "interval over seeds):\n\n" + verdicts + "\n" if verdicts else "")
    if len(text) > MAX_DESCRIPTION:
        cut = "\n\n… (cut: the full tables are in the artifacts `report/`)\n"
        text = text[:MAX_DESCRIPTION - len(cut)] + cut
    return text


# -------------------------------------------------------------------- entry
@dataclass(frozen=True)
class Report:
    """What :func:`make_report` wrote."""

    parent_run_id: str
    table: str
    files: tuple[Path, ...]
    comparisons: tuple[Comparison, ...] = ()
    comparison_md: str = ""  # the text of comparison.md


def _describe_parent(client: Any, run_id: str, metrics: Mapping[str, float],
                     description: str) -> None:
    """The headline metrics (one batched write) and the description of the parent."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    points = [Metric(k, v, now, 0) for k, v in metrics.items()]
    client.log_batch(run_id, metrics=points[:1000], tags=[RunTag(DESCRIPTION_TAG, description)])
    for i in range(1000, len(points), 1000):  # MLflow takes 1000 metrics per batch
        client.log_batch(run_id, metrics=points[i:i + 1000])


def _references(meta: ReportMeta, groups: Mapping[str, Sequence[ChildRun]],
                reference: str | None) -> Mapping[str, str]:
    if reference is None:
        return meta.references
    if reference not in groups:
        raise ReportError(f"--reference {reference!r} is not a variant with finished runs "
                          f"(variants: {', '.join(groups)})")
    return MappingProxyType({v: reference for v in groups})


def make_report(target: str | None = None, out: str | Path | None = None,
                tracking_uri: str = "", target_accuracy: float | None = None,
                log_to_parent: bool = True, *, reference: str | None = None,
                last: int | None = None, best: bool = False,
                from_csv: str | Path | None = None, plots: bool = True) -> Report:
    """Read a sweep back (from MLflow, or from a report folder's CSVs) and write the
    tables, the comparisons, the data files and the plots.

    Parameters
    ----------
    target
        An MLflow experiment name (its latest benchmark sweep) or a parent run id;
        not used with ``from_csv``.
    out
        Output folder (default ``reports/<benchmark name>``; with ``from_csv``, that
        folder).
    tracking_uri
        MLflow store ('' = ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
    target_accuracy
        Overrides the benchmark's ``target-accuracy`` for the "to target" columns.
    log_to_parent
        Also log the files as artifacts of the parent run (under ``report/``); never
        with ``from_csv``.
    reference
        Compare every other variant with this one (instead of the benchmark's
        ``reference`` tables).
    last
        Figures are the mean of each run's last ``last`` evaluated rounds.
    best
        Figures are each metric's best value over the evaluated rounds (optimistic).
    from_csv
        A folder holding ``runs.csv``, ``clients.csv`` and ``report.json`` (written
        by an earlier report): read those instead of MLflow. The target, references
        and round selection recorded in ``report.json`` apply unless given here
        (``last=1`` is the final round).
    plots
        Also draw the PNGs.

    Returns
    -------
    Report
        The parent run id, the Markdown of ``summary.md``, the files written and the
        paired comparisons.
    """
    selection = Selection(last=last, best=best)
    client = None
    if from_csv is not None:
        meta, children = read_data(from_csv)
        if last is None and not best:  # the folder's own choice, unless told otherwise
            selection = Selection(last=meta.last, best=meta.best)
        folder = Path(out) if out else Path(from_csv)
        log_to_parent = False
    else:
        if not target:
            raise ReportError("name an experiment or parent run id, or give --from-csv DIR")
        client = Tracker.connect(tracking_uri)
        meta = resolve_source(client, target)
        children = read_children(client, meta)
        meta = ReportMeta(meta.parent_run_id, meta.name, meta.variants, meta.target,
                          meta.references, meta.reference_fraction, task_kind(children),
                          meta.experiment_id)
        folder = Path(out) if out else Path("reports") / meta.name
    goal = target_accuracy if target_accuracy is not None else meta.target
    groups = group_by_variant(children, meta.variants)
    references = _references(meta, groups, reference)
    anomaly = meta.kind == ANOMALY
    rows = [summarize_variant(v, runs, goal, selection, anomaly) for v, runs in groups.items()]
    table = markdown_table(rows, goal, selection)
    folder.mkdir(parents=True, exist_ok=True)
    # report.json records what this report used, so that --from-csv redraws it as is
    data_files = write_data(replace(meta, target=goal, references=references,
                                    last=selection.last, best=selection.best),
                            children, folder)
    extra: list[Path] = []
    if references:
        ref_rows = compare_to_references(groups, {r.variant: r for r in rows}, references,
                                         meta.reference_fraction)
        if ref_rows:
            table += ("\nAgainst the reference variant (accuracy at the "
                      f"{selection.label}; goal = {meta.reference_fraction:g} x the "
                      "reference's global accuracy, mean over its seeds):\n\n"
                      + reference_table(ref_rows, meta.reference_fraction))
            write_reference_csv(ref_rows, folder / "reference.csv")
            extra.append(folder / "reference.csv")
    comparisons = compare_paired(groups, reference_pairs(groups, references), selection, goal)
    compared = comparison_table(comparisons, selection)
    (folder / "comparison.md").write_text(compared)
    write_comparison_csv(comparisons, folder / "comparison.csv")
    (folder / "summary.md").write_text(table)
    write_csv(rows, folder / "summary.csv")
    files = (folder / "summary.md", folder / "summary.csv", *extra,
             folder / "comparison.md", folder / "comparison.csv", *data_files,
             *(write_plots(groups, goal, folder, meta.name, references, comparisons,
                           "auroc" if anomaly else "accuracy", selection.label)
               if plots else ()))
    if log_to_parent and client is not None:
        for f in files:
            client.log_artifact(meta.parent_run_id, str(f), "report")
        _describe_parent(client, meta.parent_run_id, headline_metrics(rows),
                         parent_description(meta, table, comparisons, folder))
    logger.info("report of %s written to %s", meta.parent_run_id, folder)
    return Report(meta.parent_run_id, table, files, tuple(comparisons), compared)
