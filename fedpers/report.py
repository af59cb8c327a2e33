"""Benchmark reports read back from MLflow: one Markdown table and three plots.

``fedpers report EXPERIMENT_OR_PARENT_RUN`` takes the children of a benchmark's
parent run (the most recent parent of an experiment when given its name), groups
the finished ones by variant (tag ``fedpers.bench.variant``, else the run name)
and writes into ``--out``:

- ``summary.md``: per variant, mean ± std over seeds (sample std, ddof=1; no ± for
  one seed) of the final global accuracy, the final client accuracy mean and 10th
  percentile, total bytes up and down at the last round (MB = 10^6 bytes), the
  rounds, total bytes (up + down) and uplink bytes until the global accuracy first
  reaches the target, and ``time/total_s`` (total and at the target) where logged.
  "k/n" marks a target that only k of n seeds reached;
- with a ``reference`` in the benchmark, a second table in ``summary.md`` (and
  ``reference.csv``): each variant against its reference variant, the difference
  of final global accuracy in points, the ratio of total uplink bytes, and the
  rounds, uplink bytes (also as a ratio to the reference's) and simulated time until
  the global accuracy first reaches ``reference-fraction`` x the reference's final
  accuracy (mean over the reference's seeds);
- ``summary.csv``: the same numbers, unrounded;
- ``accuracy_vs_round.png``, ``accuracy_vs_uplink.png`` (log x),
  ``client_accuracy.png`` (each client's accuracy in the last evaluation round,
  from the children's ``client_metrics.csv``), and ``accuracy_vs_time.png`` where
  the runs logged the simulated clock (``time/total_s``).

The files are also logged as artifacts of the parent run under ``report/``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from fedpers.bench import (
    TAG_BENCH,
    TAG_HASH,
    TAG_REFERENCE_FRACTION,
    TAG_REFERENCES,
    TAG_RUN_NAME,
    TAG_TARGET,
    TAG_VARIANT,
    TAG_VARIANTS,
    child_runs,
)

logger = logging.getLogger(__name__)

ACC = "eval/global_accuracy"
CLIENT_MEAN = "eval/client_accuracy_mean"
CLIENT_P10 = "eval/client_accuracy_p10"
UP_TOTAL = "comm/bytes_up_total"
DOWN_TOTAL = "comm/bytes_down_total"
TIME_TOTAL = "time/total_s"
HISTORY_KEYS = (ACC, CLIENT_MEAN, CLIENT_P10, UP_TOTAL, DOWN_TOTAL, TIME_TOTAL)
PLOTS = ("accuracy_vs_round.png", "accuracy_vs_uplink.png", "client_accuracy.png")
TIME_PLOT = "accuracy_vs_time.png"  # only where the runs logged the simulated clock


class ReportError(ValueError):
    """Nothing to report: no such experiment or run, or no finished child runs."""


# ---------------------------------------------------------------- data model
@dataclass(frozen=True)
class ChildRun:
    """What the report needs from one finished child run."""

    run_id: str
    variant: str
    history: Mapping[str, tuple[tuple[int, float], ...]]
    client_accuracy: tuple[float, ...] = ()

    def final(self, key: str) -> float | None:
        h = self.history.get(key, ())
        return h[-1][1] if h else None

    def first_reaching(self, target: float) -> tuple[int, float, float, float] | None:
        """(round, bytes up + down, bytes up, simulated seconds) so far where global
        accuracy first reaches ``target`` (seconds NaN when no clock was logged)."""
        up = dict(self.history.get(UP_TOTAL, ()))
        down = dict(self.history.get(DOWN_TOTAL, ()))
        clock = dict(self.history.get(TIME_TOTAL, ()))
        for step, acc in self.history.get(ACC, ()):
            if acc >= target:
                up_b = up.get(step, math.nan)
                return step, up_b + down.get(step, math.nan), up_b, clock.get(step, math.nan)
        return None


@dataclass(frozen=True)
class Source:
    """The parent run being reported and its benchmark settings."""

    parent_run_id: str
    experiment_id: str
    name: str
    variants: tuple[str, ...]
    target: float | None
    # variant -> the variant it is compared with
    references: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    reference_fraction: float = 1.0


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


# ------------------------------------------------------------------ reading
def _looks_like_run_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _latest_parent(client: Any, experiment_id: str, name: str) -> str:
    parents = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_HASH}` LIKE '%'",
                                 order_by=["attributes.start_time DESC"], max_results=2)
    if not parents:
        raise ReportError(f"experiment {name!r} has no benchmark parent run "
                          f"(run `fedpers bench` first)")
    if len(parents) > 1:
        logger.info("experiment %r holds more than one benchmark sweep; reporting the "
                    "latest, %s", name, parents[0].info.run_id)
    return parents[0].info.run_id


def resolve_source(client: Any, target: str) -> Source:
    """A parent run from an experiment name (its latest sweep) or a parent run id."""
    exp = client.get_experiment_by_name(target)
    if exp is not None:
        parent_id = _latest_parent(client, exp.experiment_id, target)
    elif _looks_like_run_id(target):
        parent_id = target
    else:
        raise ReportError(f"{target!r} is neither an MLflow experiment nor a run id")
    try:
        parent = client.get_run(parent_id)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
        raise ReportError(f"MLflow run {parent_id!r} not found: {exc}") from exc
    tags = parent.data.tags
    variants = tuple(v for v in tags.get(TAG_VARIANTS, "").split(",") if v)
    target_acc = float(tags[TAG_TARGET]) if tags.get(TAG_TARGET) else None
    refs = json.loads(tags[TAG_REFERENCES]) if tags.get(TAG_REFERENCES) else {}
    return Source(parent_id, parent.info.experiment_id,
                  tags.get(TAG_BENCH) or tags.get(TAG_RUN_NAME) or parent_id, variants,
                  target_acc, MappingProxyType(refs),
                  float(tags.get(TAG_REFERENCE_FRACTION) or 1.0))


@contextmanager
def _no_download_bars() -> Iterator[None]:
    """MLflow draws a progress bar per artifact download; not for one small CSV."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _client_accuracy(client: Any, run_id: str) -> tuple[float, ...]:
    names = {a.path for a in client.list_artifacts(run_id)}
    if "client_metrics.csv" not in names:
        return ()
    with tempfile.TemporaryDirectory() as tmp, _no_download_bars():
        path = client.download_artifacts(run_id, "client_metrics.csv", tmp)
        with open(path, newline="") as fh:
            return tuple(float(r["accuracy"]) for r in csv.DictReader(fh)
                         if r.get("accuracy", "") != "")


def _history(client: Any, run_id: str, keys: Sequence[str]) -> dict[str, tuple]:
    out = {}
    for key in keys:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        if points:
            out[key] = tuple(points)
    return out


def read_children(client: Any, source: Source) -> list[ChildRun]:
    """The finished child runs of ``source``'s parent, with their metric histories."""
    children = []
    for run in child_runs(client, source.experiment_id, source.parent_run_id):
        if run.info.status != "FINISHED":
            continue
        tags = run.data.tags
        variant = tags.get(TAG_VARIANT) or tags.get(TAG_RUN_NAME) or run.info.run_id
        keys = [k for k in HISTORY_KEYS if k in run.data.metrics]
        children.append(ChildRun(run.info.run_id, variant, _history(client, run.info.run_id, keys),
                                 _client_accuracy(client, run.info.run_id)))
    if not children:
        raise ReportError(f"parent run {source.parent_run_id} has no finished child runs")
    return children


# ------------------------------------------------------------------- tables
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


def summarize_variant(variant: str, runs: Sequence[ChildRun], target: float | None
                      ) -> VariantRow:
    """Mean (± sample std) over the seeds of one variant."""
    reached = [r.first_reaching(target) for r in runs] if target is not None else []
    hits = [h for h in reached if h is not None]
    return VariantRow(
        variant=variant, n=len(runs),
        acc=_mean_std([r.final(ACC) for r in runs]),
        client_mean=_mean_std([r.final(CLIENT_MEAN) for r in runs]),
        client_p10=_mean_std([r.final(CLIENT_P10) for r in runs]),
        bytes_up=_mean_std([r.final(UP_TOTAL) for r in runs])[0],
        bytes_down=_mean_std([r.final(DOWN_TOTAL) for r in runs])[0],
        reached=len(hits),
        rounds_to_target=_mean_std([float(h[0]) for h in hits])[0],
        bytes_to_target=_mean_std([h[1] for h in hits])[0],
        time_s=_mean_std([r.final(TIME_TOTAL) for r in runs]),
        up_to_target=_mean_std([h[2] for h in hits])[0],
        time_to_target=_mean_std([h[3] for h in hits if not math.isnan(h[3])])[0],
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


def markdown_table(rows: Sequence[VariantRow], target: float | None) -> str:
    """The summary table as GitHub Markdown."""
    with_time = any(not math.isnan(r.time_s[0]) for r in rows)
    head = ["variant", "seeds", "global acc", "client acc (mean)", "client acc (p10)",
            "MB up", "MB down"]
    if target is not None:
        head += [f"rounds to {target:g}", f"MB to {target:g} (up+down)",
                 f"MB up to {target:g}"]
    if with_time:
        head.append("time (s)")
        if target is not None:
            head.append(f"time to {target:g} (s)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r.variant, str(r.n), _pm(r.acc, r.n), _pm(r.client_mean, r.n),
                 _pm(r.client_p10, r.n), _mb(r.bytes_up), _mb(r.bytes_down)]
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
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[VariantRow], path: Path) -> None:
    """Every figure of the table, unrounded (NaN where absent)."""
    fields = ["variant", "seeds", "global_acc_mean", "global_acc_std", "client_acc_mean",
              "client_acc_mean_std", "client_acc_p10", "client_acc_p10_std", "bytes_up",
              "bytes_down", "seeds_reaching_target", "rounds_to_target", "bytes_to_target",
              "time_s_mean", "time_s_std", "up_bytes_to_target", "time_to_target_s"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for r in rows:
            w.writerow([r.variant, r.n, *r.acc, *r.client_mean, *r.client_p10, r.bytes_up,
                        r.bytes_down, r.reached, r.rounds_to_target, r.bytes_to_target,
                        *r.time_s, r.up_to_target, r.time_to_target])


# ---------------------------------------------------------- vs the reference
@dataclass(frozen=True)
class ReferenceRow:
    """A variant against its reference variant (NaN where absent)."""

    variant: str
    reference: str
    n: int
    goal: float             # reference-fraction x the reference's mean final accuracy
    acc_delta: float        # final global accuracy minus the reference's, in points
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
    goal = "ref final acc" if fraction == 1.0 else f"{fraction:g} x ref final acc"
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


# -------------------------------------------------------------------- plots
def _mean_curve(runs: Sequence[ChildRun], key: str) -> dict[int, np.ndarray]:
    """step -> values of ``key`` at that step over the runs that logged it."""
    per_step: dict[int, list[float]] = {}
    for r in runs:
        for step, value in r.history.get(key, ()):
            per_step.setdefault(step, []).append(value)
    return {s: np.asarray(v) for s, v in sorted(per_step.items())}


X_LABELS = {UP_TOTAL: ("cumulative uplink bytes (all clients)", True),
            TIME_TOTAL: ("simulated time (s)", False)}


def _panels(groups: Mapping[str, Sequence[ChildRun]], references: Mapping[str, str]
            ) -> dict[str, dict[str, Sequence[ChildRun]]]:
    """One panel per reference group (the reference and the variants compared with
    it) when there are several; otherwise one panel with every variant."""
    refs = list(dict.fromkeys(references[v] for v in groups if v in references))
    if len(refs) < 2:
        return {"": dict(groups)}
    panels: dict[str, dict[str, Sequence[ChildRun]]] = {
        f"vs {ref}": {v: runs for v, runs in groups.items() if references.get(v) == ref}
        for ref in refs}
    rest = {v: runs for v, runs in groups.items() if v not in references}
    if rest:
        panels["other"] = rest
    return panels


def _draw_curves(ax: Any, groups: Mapping[str, Sequence[ChildRun]], x_key: str | None,
                 target: float | None) -> None:
    for variant, runs in groups.items():
        acc = _mean_curve(runs, ACC)
        xs_by_step = _mean_curve(runs, x_key) if x_key else {}
        steps = [s for s in acc if x_key is None or s in xs_by_step]
        if not steps:
            continue
        x = [s if x_key is None else float(xs_by_step[s].mean()) for s in steps]
        mean = np.array([acc[s].mean() for s in steps])
        (line,) = ax.plot(x, mean, marker="o", markersize=3,
                          label=f"{variant} ({len(runs)} seeds, band = min–max)"
                          if len(runs) > 1 else variant)
        if len(runs) > 1:
            lo = [acc[s].min() for s in steps]
            hi = [acc[s].max() for s in steps]
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
    if x_key:
        label, log_x = X_LABELS[x_key]
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(label)
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("server round")
    ax.set_ylabel("global accuracy (mean over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7 if len(groups) > 8 else 8)


def _plot_curves(groups: Mapping[str, Sequence[ChildRun]], x_key: str | None,
                 target: float | None, path: Path, title: str,
                 references: Mapping[str, str] = MappingProxyType({})) -> None:
    import matplotlib.pyplot as plt

    panels = _panels(groups, references)
    cols = 1 if len(panels) == 1 else 2
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.5 * rows), squeeze=False,
                             sharey=True)
    for ax, (label, members) in zip(axes.flat, panels.items(), strict=False):
        _draw_curves(ax, members, x_key, target)
        ax.set_title(f"{title}, {label}" if label else title)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_clients(groups: Mapping[str, Sequence[ChildRun]], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    names = list(groups)
    data = [np.concatenate([np.asarray(r.client_accuracy) for r in groups[v]] or [[]])
            for v in names]
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(names) + 2), 4.5))
    rng = np.random.default_rng(0)  # jitter of the dots only
    for i, values in enumerate(data, start=1):
        if values.size:
            ax.boxplot(values, positions=[i], widths=0.5, showfliers=False)
            ax.scatter(i + rng.uniform(-0.15, 0.15, values.size), values, s=8, alpha=0.5)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
    ax.set_ylabel("client accuracy, last evaluation round")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(groups: Mapping[str, Sequence[ChildRun]], target: float | None, out: Path,
                name: str, references: Mapping[str, str] = MappingProxyType({})
                ) -> list[Path]:
    """The PNGs (Agg backend): :data:`PLOTS`, and :data:`TIME_PLOT` where the runs
    logged the simulated clock; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    paths = [out / p for p in PLOTS]
    _plot_curves(groups, None, target, paths[0], f"{name}: accuracy per round", references)
    _plot_curves(groups, UP_TOTAL, target, paths[1], f"{name}: accuracy vs uplink bytes",
                 references)
    _plot_clients(groups, paths[2], f"{name}: per-client accuracy")
    if any(TIME_TOTAL in r.history for runs in groups.values() for r in runs):
        paths.append(out / TIME_PLOT)
        _plot_curves(groups, TIME_TOTAL, target, paths[-1],
                     f"{name}: accuracy vs simulated time", references)
    return paths


# -------------------------------------------------------------------- entry
@dataclass(frozen=True)
class Report:
    """What :func:`make_report` wrote."""

    parent_run_id: str
    table: str
    files: tuple[Path, ...]


def make_report(target: str, out: str | Path | None = None, tracking_uri: str = "",
                target_accuracy: float | None = None, log_to_parent: bool = True) -> Report:
    """Read a sweep back from MLflow and write the table, the CSV and the plots.

    Parameters
    ----------
    target
        An MLflow experiment name (its latest benchmark sweep) or a parent run id.
    out
        Output folder (default ``reports/<benchmark name>``).
    tracking_uri
        MLflow store ('' = ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
    target_accuracy
        Overrides the benchmark's ``target-accuracy`` for the "to target" columns.
    log_to_parent
        Also log the files as artifacts of the parent run (under ``report/``).

    Returns
    -------
    Report
        The parent run id, the Markdown table and the files written.
    """
    from fedpers.tracking import Tracker

    client = Tracker.connect(tracking_uri)
    source = resolve_source(client, target)
    goal = target_accuracy if target_accuracy is not None else source.target
    groups = group_by_variant(read_children(client, source), source.variants)
    rows = [summarize_variant(v, runs, goal) for v, runs in groups.items()]
    table = markdown_table(rows, goal)
    folder = Path(out) if out else Path("reports") / source.name
    folder.mkdir(parents=True, exist_ok=True)
    extra: list[Path] = []
    if source.references:
        ref_rows = compare_to_references(groups, {r.variant: r for r in rows},
                                         source.references, source.reference_fraction)
        table += ("\nAgainst the reference variant (goal = "
                  f"{source.reference_fraction:g} x the reference's final global accuracy, "
                  "mean over its seeds):\n\n"
                  + reference_table(ref_rows, source.reference_fraction))
        write_reference_csv(ref_rows, folder / "reference.csv")
        extra.append(folder / "reference.csv")
    (folder / "summary.md").write_text(table)
    write_csv(rows, folder / "summary.csv")
    files = (folder / "summary.md", folder / "summary.csv", *extra,
             *write_plots(groups, goal, folder, source.name, source.references))
    if log_to_parent:
        for f in files:
            client.log_artifact(source.parent_run_id, str(f), "report")
    logger.info("report of %s written to %s", source.parent_run_id, folder)
    return Report(source.parent_run_id, table, files)
