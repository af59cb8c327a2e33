"""Paired comparisons: each variant against its reference, seed by seed and client by client.

For each (variant, reference) pair and each metric some run logged, the paired
difference over the seeds both ran (mean, 95% Student-t interval, paired t-test), the
Wilcoxon signed-rank test of per-client differences on the client-mean rows, both
p-values Holm-corrected over every row, and a verdict (:func:`fedpers.stats.verdict`).
Written as ``comparison.md`` and ``comparison.csv`` (columns :data:`COMPARISON_FIELDS`).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedpers import stats
from fedpers.report_data import (
    ACC,
    CLIENT_ID,
    ChildRun,
)
from fedpers.report_tables import CLIENT_MEAN, CLIENT_P10, FINAL, UP_TO_TARGET, Selection, caption

logger = logging.getLogger(__name__)

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
                    assert target is not None  # UP_TO_TARGET is compared only with a target
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


