"""The report's PNGs (matplotlib, Agg backend): accuracy curves with 95% t intervals
over seeds, per-client box plots, and the forest plot of paired differences."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import stats

from fedpers.report_compare import Comparison
from fedpers.report_data import ACC, TIME_TOTAL, UP_TOTAL, ChildRun

PLOTS = ("accuracy_vs_round.png", "accuracy_vs_uplink.png", "client_accuracy.png")
TIME_PLOT = "accuracy_vs_time.png"  # only where the runs logged the simulated clock
COMPARISON_PLOT = "comparison.png"  # only where some variant has a reference
BAND = "band = 95% CI over seeds (Student t)"
POOLED = "clients of all seeds pooled"


def _per_step(runs: Sequence[ChildRun], key: str) -> dict[int, np.ndarray]:
    """step -> values of ``key`` at that step over the runs that logged it."""
    per_step: dict[int, list[float]] = {}
    for r in runs:
        for step, value in r.history.get(key, ()):
            per_step.setdefault(step, []).append(value)
    return {s: np.asarray(v) for s, v in sorted(per_step.items())}


def t_band(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """``mean ± t · s / sqrt(n)`` of ``values`` (NaN for fewer than 2)."""
    n = values.size
    if n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    mean = float(values.mean())
    return mean - half, mean + half


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
        acc = _per_step(runs, ACC)
        xs_by_step = _per_step(runs, x_key) if x_key else {}
        steps = [s for s in acc if x_key is None or s in xs_by_step]
        if not steps:
            continue
        x = [s if x_key is None else float(xs_by_step[s].mean()) for s in steps]
        mean = np.array([acc[s].mean() for s in steps])
        (line,) = ax.plot(x, mean, marker="o", markersize=3,
                          label=f"{variant} ({len(runs)} seeds)" if len(runs) > 1 else variant)
        bands = [t_band(acc[s]) for s in steps]
        if any(not math.isnan(lo) for lo, _ in bands):
            ax.fill_between(x, [b[0] for b in bands], [b[1] for b in bands],
                            color=line.get_color(), alpha=0.15, linewidth=0)
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
    ax.legend(fontsize=7 if len(groups) > 8 else 8, title=BAND, title_fontsize=7)


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


def _plot_clients(groups: Mapping[str, Sequence[ChildRun]], path: Path, title: str,
                  column: str = "accuracy") -> None:
    import matplotlib.pyplot as plt

    names = list(groups)
    data = [np.asarray([x for r in groups[v] for x in r.client_values(column)]) for v in names]
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(names) + 2), 4.5))
    rng = np.random.default_rng(0)  # jitter of the dots only
    for i, values in enumerate(data, start=1):
        if values.size:
            ax.boxplot(values, positions=[i], widths=0.5, showfliers=False)
            ax.scatter(i + rng.uniform(-0.15, 0.15, values.size), values, s=8, alpha=0.5)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
    ax.set_ylabel(f"client {column}, last evaluation round")
    ax.set_title(f"{title} ({POOLED})")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_comparison(rows: Sequence[Comparison], path: Path, title: str,
                    selection: str = "final round") -> bool:
    """Forest plot: per metric, each variant's mean paired difference from its
    reference with its 95% CI, and the zero line. False (nothing drawn) when no row
    has a mean."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = list(dict.fromkeys(r.metric for r in rows if not math.isnan(r.mean_diff)))
    if not metrics:
        return False
    cols = min(3, len(metrics))
    n_rows = -(-len(metrics) // cols)
    height = max(2.5, 0.45 * max(sum(r.metric == m for r in rows) for m in metrics) + 1.5)
    fig, axes = plt.subplots(n_rows, cols, figsize=(5.5 * cols, height * n_rows),
                             squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        mine = [r for r in rows if r.metric == metric and not math.isnan(r.mean_diff)]
        scale = 1e-6 if metric.startswith("comm/") else 1.0  # bytes shown in MB
        y = np.arange(len(mine))[::-1]
        for yi, r in zip(y, mine, strict=True):
            has_ci = not math.isnan(r.ci_low)
            ax.errorbar(r.mean_diff * scale, yi, fmt="o", color="C0" if has_ci else "grey",
                        xerr=[[(r.mean_diff - r.ci_low) * scale],
                              [(r.ci_high - r.mean_diff) * scale]] if has_ci else None,
                        capsize=3)
        ax.axvline(0.0, color="black", linewidth=1)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_xlabel("Δ MB (variant − reference)" if scale != 1.0
                      else "Δ (variant − reference)", fontsize=8)
        ax.set_yticks(y, [f"{r.variant} − {r.reference} (n={r.n_seeds})" for r in mine],
                      fontsize=7)
        ax.set_title(mine[0].label, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: paired difference from the reference at the {selection} "
                 f"(mean over seeds, 95% t CI; grey = no CI)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_plots(groups: Mapping[str, Sequence[ChildRun]], target: float | None, out: Path,
                name: str, references: Mapping[str, str] = MappingProxyType({}),
                comparisons: Sequence[Comparison] = (), client_column: str = "accuracy",
                selection: str = "final round") -> list[Path]:
    """The PNGs: :data:`PLOTS`, :data:`TIME_PLOT` where the runs logged the simulated
    clock, :data:`COMPARISON_PLOT` where there are comparisons; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    paths = [out / p for p in PLOTS]
    _plot_curves(groups, None, target, paths[0], f"{name}: accuracy per round", references)
    _plot_curves(groups, UP_TOTAL, target, paths[1], f"{name}: accuracy vs uplink bytes",
                 references)
    _plot_clients(groups, paths[2], f"{name}: per-client {client_column}", client_column)
    if any(TIME_TOTAL in r.history for runs in groups.values() for r in runs):
        paths.append(out / TIME_PLOT)
        _plot_curves(groups, TIME_TOTAL, target, paths[-1],
                     f"{name}: accuracy vs simulated time", references)
    if comparisons and plot_comparison(comparisons, out / COMPARISON_PLOT, name, selection):
        paths.append(out / COMPARISON_PLOT)
    return paths
