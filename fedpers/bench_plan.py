"""A benchmark's runs: which variants and seeds, each run's merged and validated config.

Merge order of one run's config: ``[base]`` -> ``[variants.NAME]`` -> (``--quick``:
:data:`~fedpers.bench_definition.QUICK_DEFAULTS` -> ``[quick]``) -> ``seed`` ->
(``--rounds``: ``num-server-rounds``) -> ``experiment`` and ``tracking-uri``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from fedpers.bench_definition import (
    QUICK_DEFAULTS,
    Benchmark,
    BenchmarkError,
    Variant,
    check_config,
)
from fedpers.config import RunConfig


@dataclass(frozen=True)
class PlannedRun:
    """One child run of a sweep: a variant, a seed and the validated config."""

    variant: str
    seed: int
    cfg: RunConfig

    @property
    def run_name(self) -> str:
        return f"{self.variant}/seed={self.seed}"

    @property
    def digest(self) -> str:
        return self.cfg.digest()



def select_seeds(seeds: tuple[int, ...], n: int | None, quick: bool = False) -> tuple[int, ...]:
    """The seeds a sweep runs.

    ``n`` given: the first ``n`` listed seeds, or ``0 .. n-1`` when the file lists
    fewer than ``n``. ``n`` not given: every listed seed, or only the first under
    ``--quick``.
    """
    if n is None:
        return seeds[:1] if quick else seeds
    if n < 1:
        raise BenchmarkError(f"--seeds must be >= 1, got {n}")
    return seeds[:n] if n <= len(seeds) else tuple(range(n))


def merge_config(bench: Benchmark, variant: Variant, seed: int, *, rounds: int | None = None,
                 quick: bool = False, experiment: str = "", tracking_uri: str = ""
                 ) -> dict[str, Any]:
    """One run's raw config, merged in the order given in the module docstring."""
    raw: dict[str, Any] = {**bench.base, **variant.overrides}
    if quick:
        raw.update(QUICK_DEFAULTS)
        raw.update(bench.quick)
    raw["seed"] = seed
    if rounds is not None:
        raw["num-server-rounds"] = rounds
    if experiment:
        raw["experiment"] = experiment
    if tracking_uri:
        raw["tracking-uri"] = tracking_uri
    return raw


def select_variants(bench: Benchmark, patterns: tuple[str, ...]) -> tuple[Variant, ...]:
    """The variants whose names match any of ``patterns`` (shell globs), in file order.

    A pattern that matches no variant is an error that lists the variants.
    """
    if not patterns:
        return bench.variants
    names = [v.name for v in bench.variants]
    unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
    if unmatched:
        raise BenchmarkError(f"--variants: {', '.join(map(repr, unmatched))} match no variant "
                             f"of {bench.name}; variants: {', '.join(names)}")
    return tuple(v for v in bench.variants if any(fnmatch.fnmatchcase(v.name, p)
                                                  for p in patterns))


def plan_runs(bench: Benchmark, *, seeds: int | None = None, rounds: int | None = None,
              quick: bool = False, experiment: str = "", tracking_uri: str = "",
              variants: tuple[str, ...] = ()) -> tuple[PlannedRun, ...]:
    """Every variant x seed of a sweep, each config validated before anything runs.

    Seed-major: every variant's first seed runs before any variant's second, so a sweep
    stopped part-way has every variant at least once. ``variants`` (shell globs) keeps
    only the matching variants: a sweep of a subset is a sweep of its own.
    """
    runs = []
    chosen = select_variants(bench, variants)
    if quick and bench.quick_variants and not variants:
        chosen = tuple(v for v in chosen if v.name in bench.quick_variants)
    for seed in select_seeds(bench.seeds, seeds, quick):
        for variant in chosen:
            raw = merge_config(bench, variant, seed, rounds=rounds, quick=quick,
                               experiment=experiment, tracking_uri=tracking_uri)
            where = f"[variants.{variant.name}] seed {seed}"
            runs.append(PlannedRun(variant.name, seed, check_config(bench.folder, where, raw)))
    return tuple(runs)


def sweep_hash(bench: Benchmark, runs: tuple[PlannedRun, ...], quick: bool = False) -> str:
    """Identity of a sweep: what it runs, not where it logs (store, experiment)."""
    doc = {"name": bench.name, "target": bench.target_accuracy, "quick": quick,
           "runs": [[r.variant, r.seed, r.digest] for r in runs]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def default_experiment(bench: Benchmark, quick: bool = False) -> str:
    """The benchmark's name; ``NAME-quick`` for ``--quick`` sweeps."""
    return f"{bench.name}-quick" if quick else bench.name
