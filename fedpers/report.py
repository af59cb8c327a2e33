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
- ``comparison.md`` and ``comparison.csv`` (columns :data:`COMPARISON_FIELDS`):
  per variant, reference and metric, the paired difference (variant minus
  reference) over the seeds both ran, its mean and 95% Student-t interval, the
  paired t-test p-value; where the runs logged ``client_metrics.csv``, the Wilcoxon
  signed-rank test of per-client differences (clients paired by id within a seed,
  all seeds pooled; on the client-mean rows); both p-values also Holm-corrected over
  every row of the report; and a verdict (``better``, ``worse``, ``no detectable
  difference``, ``too few seeds`` under 3 paired seeds). The file is written, with
  no rows, when there is no reference;
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

import csv
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from fedpers import stats
from fedpers.report_data import (
    ACC,
    ANOMALY,
    CLIENT_ID,
    DOWN_TOTAL,
    TIME_TOTAL,
    UP_TOTAL,
    ChildRun,
    ReportError,
    ReportMeta,
    read_children,
    read_data,
    resolve_source,
    task_kind,
    write_data,
)
from fedpers.report_plots import COMPARISON_PLOT, PLOTS, TIME_PLOT, write_plots

__all__ = ["COMPARISON_FIELDS", "COMPARISON_PLOT", "PLOTS", "TIME_PLOT", "ChildRun",
           "Comparison", "Report", "ReportError", "Selection", "make_report"]

logger = logging.getLogger(__name__)

CLIENT_MEAN = "eval/client_accuracy_mean"
CLIENT_P10 = "eval/client_accuracy_p10"
UP_TO_TARGET = "comm/bytes_up_to_target"  # comparison metric: uplink bytes to the target
#: Anomaly metrics: key -> (table label, summary.csv column)
ANOMALY_KEYS = {
    "eval/global_auroc": ("AUROC", "global_auroc"),
    "eval/global_auprc": ("AUPRC", "global_auprc"),
    "eval/global_f1": ("F1 (global thr)", "global_f1"),
    "eval/client_auroc_mean": ("device AUROC (mean)", "client_auroc_mean"),
    "eval/client_auroc_p10": ("device AUROC (p10)", "client_auroc_p10"),
    "eval/client_f1_mean": ("device F1, own thr (mean)", "client_f1_mean"),
    "eval/client_f1_p10": ("device F1, own thr (p10)", "client_f1_p10"),
    "eval/client_f1_global_threshold_mean": ("device F1, global thr (mean)",
                                             "client_f1_global_threshold_mean"),
    "eval/client_f1_global_threshold_p10": ("device F1, global thr (p10)",
                                            "client_f1_global_threshold_p10"),
}
#: Compared metrics: key -> (label, column of client_metrics.csv for the per-client
#: test, or None). Per-client tests go with the client-mean rows only: the signed-rank
#: test speaks of the typical client, not of the 10th percentile.
COMPARED = {
    ACC: ("global accuracy", None),
    CLIENT_MEAN: ("client accuracy (mean)", "accuracy"),
    CLIENT_P10: ("client accuracy (p10)", None),
    "eval/global_auroc": ("global AUROC", None),
    "eval/global_auprc": ("global AUPRC", None),
    "eval/global_f1": ("global F1 (global threshold)", None),
    "eval/client_auroc_mean": ("device AUROC (mean)", "auroc"),
    "eval/client_auroc_p10": ("device AUROC (p10)", None),
    "eval/client_f1_mean": ("device F1, own threshold (mean)", "f1"),
    "eval/client_f1_p10": ("device F1, own threshold (p10)", None),
    "eval/client_f1_global_threshold_mean": ("device F1, global threshold (mean)",
                                             "f1-global-threshold"),
    "eval/client_f1_global_threshold_p10": ("device F1, global threshold (p10)", None),
}
COMPARISON_FIELDS = ("variant", "reference", "metric", "n_seeds", "mean_diff", "ci_low",
                     "ci_high", "p_seeds", "p_seeds_holm", "n_clients", "p_clients",
                     "p_clients_holm", "verdict")


# ------------------------------------------------------- which round's value
@dataclass(frozen=True)
class Selection:
    """Which evaluated round a run's figure comes from.

    ``final`` (default): the last evaluated round; ``last=K``: the mean of the last
    K evaluated rounds; ``best``: the metric's best value over the evaluated rounds
    (optimistic: the round is picked on the test data itself).
    """

    last: int | None = None
    best: bool = False

    def __post_init__(self) -> None:
        if self.last is not None and self.last < 1:
            raise ReportError(f"--last must be >= 1, got {self.last}")
        if self.last is not None and self.best:
            raise ReportError("--last and --best exclude each other")

    @property
    def label(self) -> str:
        if self.best:
            return "best round (optimistic)"
        if self.last is not None and self.last > 1:
            return f"mean of the last {self.last} evaluated rounds"
        return "final round"

    def value(self, run: ChildRun, key: str) -> float | None:
        h = run.history.get(key, ())
        if not h:
            return None
        if self.best:
            return max(v for _, v in h)
        if self.last is not None and self.last > 1:
            return float(np.mean([v for _, v in h[-self.last:]]))
        return h[-1][1]


FINAL = Selection()


# ------------------------------------------------------------------- tables
@dataclass(frozen=True)
class VariantRow:
    """One table row: a variant's figures over its seeds (NaN where absent)."""

    variant: str
    n: int
    acc: tuple[float, float]
    client_mean: tuple[float, float]
    client_p10: tuple[float, float]
    bytes_up: float
    bytes_down: float
    reached: int
    rounds_to_target: float
    bytes_to_target: float
    time_s: tuple[float, float]
    up_to_target: float = math.nan
    time_to_target: float = math.nan
    # anomaly tasks: ANOMALY_KEYS key -> (mean, std)
    anomaly: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: MappingProxyType({}))


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def group_by_variant(children: Sequence[ChildRun], order: Sequence[str] = ()
                     ) -> dict[str, list[ChildRun]]:
    """Children per variant: variants in ``order`` first, the rest as first seen."""
    groups: dict[str, list[ChildRun]] = {v: [] for v in order}
    for c in children:
        groups.setdefault(c.variant, []).append(c)
    return {v: runs for v, runs in groups.items() if runs}


def summarize_variant(variant: str, runs: Sequence[ChildRun], target: float | None,
                      selection: Selection = FINAL, anomaly: bool = False) -> VariantRow:
    """Mean (± sample std) over the seeds of one variant."""
    reached = [r.first_reaching(target) for r in runs] if target is not None else []
    hits = [h for h in reached if h is not None]
    pick = selection.value
    return VariantRow(
        variant=variant, n=len(runs),
        acc=_mean_std([pick(r, ACC) for r in runs]),
        client_mean=_mean_std([pick(r, CLIENT_MEAN) for r in runs]),
        client_p10=_mean_std([pick(r, CLIENT_P10) for r in runs]),
        bytes_up=_mean_std([r.final(UP_TOTAL) for r in runs])[0],
        bytes_down=_mean_std([r.final(DOWN_TOTAL) for r in runs])[0],
        reached=len(hits),
        rounds_to_target=_mean_std([float(h[0]) for h in hits])[0],
        bytes_to_target=_mean_std([h[1] for h in hits])[0],
        time_s=_mean_std([r.final(TIME_TOTAL) for r in runs]),
        up_to_target=_mean_std([h[2] for h in hits])[0],
        time_to_target=_mean_std([h[3] for h in hits if not math.isnan(h[3])])[0],
        anomaly=MappingProxyType({k: _mean_std([pick(r, k) for r in runs])
                                  for k in ANOMALY_KEYS} if anomaly else {}),
    )


def _pm(ms: tuple[float, float], n: int, fmt: str = "{:.4f}") -> str:
    mean, std = ms
    if math.isnan(mean):
        return "–"
    return fmt.format(mean) if n < 2 else f"{fmt.format(mean)} ± {fmt.format(std)}"


def _mb(value: float) -> str:
    return "–" if math.isnan(value) else f"{value / 1e6:.2f}"


def _to_target(value: str, row: VariantRow | ReferenceRow) -> str:
    """``value``, "k/n" when only k of n seeds got there, "not reached" when none did."""
    if row.reached == 0:
        return "not reached"
    return value if row.reached == row.n else f"{value} ({row.reached}/{row.n})"


def caption(selection: Selection, what: str = "mean ± sample std over seeds") -> str:
    """The line above every table that says which round its figures come from."""
    return f"Accuracy and scores at: **{selection.label}** ({what}).\n\n"


def _anomaly_keys(rows: Sequence[VariantRow]) -> list[str]:
    return [k for k in ANOMALY_KEYS if any(not math.isnan(r.anomaly.get(k, (math.nan,))[0])
                                           for r in rows)]


def markdown_table(rows: Sequence[VariantRow], target: float | None,
                   selection: Selection = FINAL) -> str:
    """The summary table as GitHub Markdown, under its :func:`caption`."""
    with_time = any(not math.isnan(r.time_s[0]) for r in rows)
    anomaly = _anomaly_keys(rows)
    if anomaly:
        head = ["variant", "seeds", *(ANOMALY_KEYS[k][0] for k in anomaly), "flag acc"]
    else:
        head = ["variant", "seeds", "global acc", "client acc (mean)", "client acc (p10)"]
    head += ["MB up", "MB down"]
    if target is not None:
        head += [f"rounds to {target:g}", f"MB to {target:g} (up+down)",
                 f"MB up to {target:g}"]
    if with_time:
        head.append("time (s)")
        if target is not None:
            head.append(f"time to {target:g} (s)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if anomaly:
            cells = [r.variant, str(r.n), *(_pm(r.anomaly[k], r.n) for k in anomaly),
                     _pm(r.acc, r.n)]
        else:
            cells = [r.variant, str(r.n), _pm(r.acc, r.n), _pm(r.client_mean, r.n),
                     _pm(r.client_p10, r.n)]
        cells += [_mb(r.bytes_up), _mb(r.bytes_down)]
        if target is not None:
            cells += [_to_target(f"{r.rounds_to_target:.1f}", r),
                      _to_target(_mb(r.bytes_to_target), r),
                      _to_target(_mb(r.up_to_target), r)]
        if with_time:
            cells.append(_pm(r.time_s, r.n, "{:.1f}"))
            if target is not None:
                cells.append(_to_target("–" if math.isnan(r.time_to_target)
                                        else f"{r.time_to_target:.1f}", r))
        lines.append("| " + " | ".join(cells) + " |")
    return caption(selection) + "\n".join(lines) + "\n"


def write_csv(rows: Sequence[VariantRow], path: Path) -> None:
    """Every figure of the table, unrounded (NaN where absent); anomaly tasks add a
    mean and a std column per :data:`ANOMALY_KEYS` metric."""
    anomaly = _anomaly_keys(rows)
    fields = ["variant", "seeds", "global_acc_mean", "global_acc_std", "client_acc_mean",
              "client_acc_mean_std", "client_acc_p10", "client_acc_p10_std", "bytes_up",
              "bytes_down", "seeds_reaching_target", "rounds_to_target", "bytes_to_target",
              "time_s_mean", "time_s_std", "up_bytes_to_target", "time_to_target_s"]
    fields += [c for k in anomaly for c in (ANOMALY_KEYS[k][1], f"{ANOMALY_KEYS[k][1]}_std")]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for r in rows:
            w.writerow([r.variant, r.n, *r.acc, *r.client_mean, *r.client_p10, r.bytes_up,
                        r.bytes_down, r.reached, r.rounds_to_target, r.bytes_to_target,
                        *r.time_s, r.up_to_target, r.time_to_target,
                        *(x for k in anomaly for x in r.anomaly[k])])


# ---------------------------------------------------------- vs the reference
@dataclass(frozen=True)
class ReferenceRow:
    """A variant against its reference variant (NaN where absent)."""

    variant: str
    reference: str
    n: int
    goal: float             # reference-fraction x the reference's mean accuracy
    acc_delta: float        # global accuracy minus the reference's, in points
    up_ratio: float         # total uplink bytes / the reference's
    reached: int
    rounds_to_goal: float
    up_to_goal: float
    up_to_goal_ratio: float  # uplink bytes to the goal / the reference's
    time_to_goal: float
    time_to_goal_ratio: float  # simulated seconds to the goal / the reference's


def compare_to_references(groups: Mapping[str, Sequence[ChildRun]],
                          rows: Mapping[str, VariantRow], references: Mapping[str, str],
                          fraction: float) -> list[ReferenceRow]:
    """Each variant with a finished reference, against that reference."""
    out = []
    at_goal: dict[str, VariantRow] = {}  # each reference against its own goal, once
    for variant, runs in groups.items():
        ref = references.get(variant)
        if ref is None or ref not in rows:
            continue
        ref_row = rows[ref]
        goal = fraction * ref_row.acc[0]
        if ref not in at_goal:
            at_goal[ref] = summarize_variant(ref, groups[ref], goal)
        theirs = at_goal[ref]
        mine = theirs if variant == ref else summarize_variant(variant, runs, goal)
        out.append(ReferenceRow(
            variant=variant, reference=ref, n=len(runs), goal=goal,
            acc_delta=100.0 * (rows[variant].acc[0] - ref_row.acc[0]),
            up_ratio=rows[variant].bytes_up / ref_row.bytes_up if ref_row.bytes_up else math.nan,
            reached=mine.reached, rounds_to_goal=mine.rounds_to_target,
            up_to_goal=mine.up_to_target,
            up_to_goal_ratio=(mine.up_to_target / theirs.up_to_target
                              if theirs.reached and theirs.up_to_target else math.nan),
            time_to_goal=mine.time_to_target,
            time_to_goal_ratio=(mine.time_to_target / theirs.time_to_target
                                if theirs.reached and theirs.time_to_target else math.nan)))
    return out


def _ratio(value: float) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:.3g}" if value >= 0.01 else f"{value:.2e}"


def reference_table(rows: Sequence[ReferenceRow], fraction: float) -> str:
    """The "against the reference" table as GitHub Markdown."""
    with_time = any(not math.isnan(r.time_to_goal) for r in rows)
    goal = "ref acc" if fraction == 1.0 else f"{fraction:g} x ref acc"
    head = ["variant", "reference", "seeds", "Δ acc vs ref (points)", "MB up ÷ ref",
            f"goal = {goal}", "rounds to goal", "MB up to goal", "MB up to goal ÷ ref"]
    if with_time:
        head += ["time to goal (s)", "time to goal ÷ ref"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r.variant, r.reference, str(r.n), f"{r.acc_delta:+.2f}", _ratio(r.up_ratio),
                 f"{r.goal:.4f}", _to_target(f"{r.rounds_to_goal:.1f}", r),
                 _to_target(_mb(r.up_to_goal), r), _to_target(_ratio(r.up_to_goal_ratio), r)]
        if with_time:
            cells += [_to_target("–" if math.isnan(r.time_to_goal)
                                 else f"{r.time_to_goal:.1f}", r),
                      _to_target(_ratio(r.time_to_goal_ratio), r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reference_csv(rows: Sequence[ReferenceRow], path: Path) -> None:
    fields = ["variant", "reference", "seeds", "goal_accuracy", "acc_delta_points",
              "bytes_up_ratio", "seeds_reaching_goal", "rounds_to_goal", "up_bytes_to_goal",
              "up_bytes_to_goal_ratio", "time_to_goal_s", "time_to_goal_ratio"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for r in rows:
            w.writerow([r.variant, r.reference, r.n, r.goal, r.acc_delta, r.up_ratio,
                        r.reached, r.rounds_to_goal, r.up_to_goal, r.up_to_goal_ratio,
                        r.time_to_goal, r.time_to_goal_ratio])


# ------------------------------------------------------ paired comparisons
@dataclass(frozen=True)
class Comparison:
    """One variant against its reference on one metric, paired by seed."""

    variant: str
    reference: str
    metric: str
    label: str
    higher_is_better: bool
    n_seeds: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_seeds: float
    p_seeds_holm: float
    n_clients: int
    p_clients: float
    p_clients_holm: float
    verdict: str


def _by_seed(runs: Sequence[ChildRun]) -> dict[int, ChildRun]:
    """Seed -> run (runs without a seed cannot pair; a repeated seed keeps its first run)."""
    out: dict[int, ChildRun] = {}
    for r in runs:
        if r.seed is None:
            logger.warning("run %s (%s) has no seed; left out of the paired comparisons",
                           r.run_id, r.variant)
        elif r.seed in out:
            logger.warning("variant %s has seed %d twice; comparing run %s, not %s",
                           r.variant, r.seed, out[r.seed].run_id, r.run_id)
        else:
            out[r.seed] = r
    return out


def client_differences(mine: ChildRun, theirs: ChildRun, column: str) -> list[float]:
    """Per-client ``column`` differences, clients paired by id (unpaired ones left out)."""
    ref = {c[CLIENT_ID]: c[column] for c in theirs.clients if CLIENT_ID in c and column in c}
    return [c[column] - ref[c[CLIENT_ID]] for c in mine.clients
            if CLIENT_ID in c and column in c and c[CLIENT_ID] in ref]


def compare_paired(groups: Mapping[str, Sequence[ChildRun]], pairs: Sequence[tuple[str, str]],
                   selection: Selection = FINAL, target: float | None = None
                   ) -> list[Comparison]:
    """Every (variant, reference) pair on every metric some run logged, with the
    Holm correction over all the rows returned (p over seeds and p over clients
    corrected separately)."""
    logged = {k for runs in groups.values() for r in runs for k in r.history}
    metrics: list[tuple[str, str, str | None, bool]] = [
        (k, label, col, True) for k, (label, col) in COMPARED.items() if k in logged]
    if target is not None and ACC in logged:
        metrics.append((UP_TO_TARGET, f"MB up to {target:g} (lower is better)", None, False))
    rows = []
    for variant, reference in pairs:
        mine, theirs = _by_seed(groups[variant]), _by_seed(groups[reference])
        seeds = sorted(set(mine) & set(theirs))
        for key, label, column, higher in metrics:
            diffs, used = [], []
            for s in seeds:
                if key == UP_TO_TARGET:
                    a, b = mine[s].first_reaching(target), theirs[s].first_reaching(target)
                    va, vb = (a[2] if a else None), (b[2] if b else None)
                else:
                    va, vb = selection.value(mine[s], key), selection.value(theirs[s], key)
                if va is not None and vb is not None and not (math.isnan(va) or math.isnan(vb)):
                    diffs.append(va - vb)
                    used.append(s)
            t = stats.paired_t(diffs)
            client_diffs = ([d for s in used
                             for d in client_differences(mine[s], theirs[s], column)]
                            if column else [])
            rows.append(Comparison(
                variant=variant, reference=reference, metric=key, label=label,
                higher_is_better=higher, n_seeds=t.n, mean_diff=t.mean, ci_low=t.ci_low,
                ci_high=t.ci_high, p_seeds=t.p, p_seeds_holm=math.nan,
                n_clients=len(client_diffs),
                p_clients=stats.wilcoxon_p(client_diffs), p_clients_holm=math.nan,
                verdict=stats.verdict(t.n, t.ci_low, t.ci_high, higher)))
    holm_seeds = stats.holm([r.p_seeds for r in rows])
    holm_clients = stats.holm([r.p_clients for r in rows])
    return [Comparison(**{**r.__dict__, "p_seeds_holm": hs, "p_clients_holm": hc})
            for r, hs, hc in zip(rows, holm_seeds, holm_clients, strict=True)]


def reference_pairs(groups: Mapping[str, Sequence[ChildRun]], references: Mapping[str, str]
                    ) -> list[tuple[str, str]]:
    """(variant, reference) for each variant whose reference ran, itself left out."""
    return [(v, references[v]) for v in groups
            if v in references and references[v] != v and references[v] in groups]


def write_comparison_csv(rows: Sequence[Comparison], path: Path) -> None:
    """:data:`COMPARISON_FIELDS`, unrounded (``nan`` where not computable)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COMPARISON_FIELDS)
        for r in rows:
            w.writerow([getattr(r, f) for f in COMPARISON_FIELDS])


def _p(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3g}"


def comparison_table(rows: Sequence[Comparison], selection: Selection = FINAL) -> str:
    """``comparison.md``: how it was computed, then one line per comparison."""
    text = caption(selection, "paired by seed: variant minus reference")
    text += ("Δ = variant − reference on each seed both ran (seeds only one side ran are "
             "left out); mean and 95% Student-t interval over those seeds; p (seeds): "
             "paired t-test. p (clients): Wilcoxon signed-rank test of per-client "
             "differences (clients of the last evaluation round paired by client id "
             "within a seed, all seeds pooled), on the client-mean rows. Holm: corrected "
             "over every row of this report, seeds and clients separately. Verdict: "
             "better/worse when the interval excludes 0 (for bytes, lower is better), "
             f"no detectable difference when it covers 0, too few seeds under "
             f"{stats.MIN_SEEDS} paired seeds.\n\n")
    if not rows:
        return text + "No variant has a reference: nothing compared.\n"
    head = ["variant", "reference", "metric", "seeds", "Δ mean", "95% CI", "p (seeds)",
            "p (seeds, Holm)", "clients", "p (clients)", "p (clients, Holm)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        scale, fmt = (1e-6, "{:+.3f}") if r.metric == UP_TO_TARGET else (1.0, "{:+.4f}")
        mean = "–" if math.isnan(r.mean_diff) else fmt.format(r.mean_diff * scale)
        ci = ("–" if math.isnan(r.ci_low) else
              f"[{fmt.format(r.ci_low * scale)}, {fmt.format(r.ci_high * scale)}]")
        lines.append("| " + " | ".join([
            r.variant, r.reference, r.label, str(r.n_seeds), mean, ci, _p(r.p_seeds),
            _p(r.p_seeds_holm), str(r.n_clients) if r.n_clients else "–", _p(r.p_clients),
            _p(r.p_clients_holm), r.verdict]) + " |")
    return text + "\n".join(lines) + "\n"


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


def verdict_lines(rows: Sequence[Comparison]) -> str:
    """One Markdown bullet per comparison: the difference, its interval and verdict."""
    lines = []
    for r in rows:
        scale, fmt = (1e-6, "{:+.3f}") if r.metric == UP_TO_TARGET else (1.0, "{:+.4f}")
        diff = "–" if math.isnan(r.mean_diff) else fmt.format(r.mean_diff * scale)
        ci = ("" if math.isnan(r.ci_low) else
              f" [{fmt.format(r.ci_low * scale)}, {fmt.format(r.ci_high * scale)}]")
        lines.append(f"- **{r.variant}** vs {r.reference}, {r.label}: Δ {diff}{ci} "
                     f"({r.n_seeds} seeds): **{r.verdict}**")
    return "\n".join(lines)


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
        from fedpers.tracking import Tracker

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
