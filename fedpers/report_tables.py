"""The report's tables: per variant over seeds, and each variant against its reference.

Which evaluated round a run's figure comes from is a :class:`Selection` (the final
round, the mean of the last K, or the best); :func:`summarize_variant` gives a
variant's :class:`VariantRow` (mean ± sample std over seeds), :func:`markdown_table`
and :func:`write_csv` write ``summary.md`` and ``summary.csv``;
:func:`compare_to_references` gives the ``reference.csv`` rows (accuracy difference,
uplink ratio, rounds, bytes and time to a fraction of the reference's accuracy).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from fedpers.report_data import (
    ACC,
    DOWN_TOTAL,
    TIME_TOTAL,
    UP_TOTAL,
    ChildRun,
    ReportError,
)

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


