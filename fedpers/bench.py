"""Benchmarks as data: a folder with a README, a base config, variants and seeds.

A benchmark lives in ``benchmarks/NAME/``::

    README.md        the question, the expected outcome, the table it produced
    benchmark.toml   seeds = [..], target-accuracy = 0.7 (optional),
                     [base] run-config keys shared by every run,
                     [variants.NAME] the keys one variant changes,
                     [quick] overrides for ``--quick`` (optional),
                     reference = "NAME" or [reference] (optional, see below)

``reference`` names the variant every other one is compared with (``reference =
"fp32"``), or, as a table, several references each with the variants it is the
reference of (``[reference]`` ``"fedavg-a0.1" = ["fedprox-0.1-a0.1", ...]``).
``fedpers report`` then adds a table of each variant against its reference: the
accuracy difference, the uplink-bytes ratio, and the rounds and uplink bytes until
the global accuracy first reaches ``reference-fraction`` (default 1.0) times the
reference's final accuracy (mean over seeds).

``fedpers bench benchmarks/NAME`` runs every variant x seed through
:func:`fedpers.simulation.run_simulation` (the path of ``fedpers run``), each as a
child of one MLflow parent run. A sweep that crashed or was interrupted resumes:
finished children are found by their config digest and not run again, and the
parent is found by the benchmark name and the hash of the resolved sweep.

Merge order of one run's config: ``[base]`` -> ``[variants.NAME]`` -> (``--quick``:
:data:`QUICK_DEFAULTS` -> ``[quick]``) -> ``seed`` -> (``--rounds``:
``num-server-rounds``) -> ``experiment`` and ``tracking-uri``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedpers.config import ConfigError, RunConfig, parse_run_config

logger = logging.getLogger(__name__)

DEFINITION_FILE = "benchmark.toml"
TOP_LEVEL_KEYS = ("seeds", "target-accuracy", "base", "variants", "quick", "quick-variants",
                  "reference", "reference-fraction")
# Set by the runner, never by a benchmark: one seed per run comes from ``seeds``.
RESERVED_KEYS = ("seed", "experiment", "tracking-uri", "mlflow-run-id")
# ``--quick``: a few seconds per run on the digits task; a benchmark's [quick] wins.
QUICK_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "task": "digits", "data-dir": "", "num-clients": 3, "num-server-rounds": 2,
    "fraction-train": 1.0, "fraction-evaluate": 1.0, "local-epochs": 1,
    "max-samples-per-client": 0, "eval-every": 1, "feature-shift": 0.0,
})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# MLflow tags: the contract between ``fedpers bench`` and ``fedpers report``.
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_BENCH = "fedpers.bench.name"
TAG_HASH = "fedpers.bench.hash"
TAG_VARIANTS = "fedpers.bench.variants"
TAG_SEEDS = "fedpers.bench.seeds"
TAG_TARGET = "fedpers.bench.target_accuracy"
TAG_QUICK = "fedpers.bench.quick"
TAG_VARIANT = "fedpers.bench.variant"
TAG_SEED = "fedpers.bench.seed"
TAG_DIGEST = "fedpers.config_digest"
TAG_REFERENCES = "fedpers.bench.references"  # JSON: variant -> its reference variant
TAG_REFERENCE_FRACTION = "fedpers.bench.reference_fraction"
# The parent's description in MLflow's UI (Markdown): what the sweep runs and how far
# it got; ``fedpers report`` replaces it with the summary table and the verdicts.
TAG_NOTE = "mlflow.note.content"
SWEEP_NOTE_HEAD = "Benchmark sweep "


class BenchmarkError(ConfigError):
    """A benchmark definition is malformed; raised before anything runs."""


# ----------------------------------------------------------------- definition
@dataclass(frozen=True)
class Variant:
    """One arm of a benchmark: the run-config keys it changes relative to ``[base]``."""

    name: str
    overrides: Mapping[str, Any]


@dataclass(frozen=True)
class Benchmark:
    """A parsed ``benchmark.toml`` (see the module docstring)."""

    name: str
    folder: Path
    base: Mapping[str, Any]
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    target_accuracy: float | None = None
    quick: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # the variants ``--quick`` runs (all when empty): big sweeps name a representative few
    quick_variants: tuple[str, ...] = ()
    # variant -> the variant it is compared with (a reference maps to itself)
    references: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    reference_fraction: float = 1.0


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


@dataclass(frozen=True)
class SweepResult:
    """What one ``fedpers bench`` call did; run ids are MLflow run ids."""

    parent_run_id: str
    experiment: str
    tracking_uri: str
    ran: tuple[str, ...]
    reused: tuple[str, ...]
    failed: tuple[str, ...]


def _error(folder: Path, message: str) -> BenchmarkError:
    return BenchmarkError(f"benchmark {str(folder)!r}: {message}")


def _read_definition(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise BenchmarkError(f"benchmark folder {str(folder)!r} does not exist")
    path = folder / DEFINITION_FILE
    if not path.is_file():
        raise _error(folder, f"no {DEFINITION_FILE} in the folder")
    if not (folder / "README.md").is_file():
        raise _error(folder, "no README.md stating the question and the expected outcome")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise _error(folder, f"{DEFINITION_FILE} is not valid TOML: {exc}") from exc


def _table(folder: Path, data: Mapping[str, Any], key: str, label: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise _error(folder, f"{label} must be a table of run-config keys")
    reserved = sorted(set(value) & set(RESERVED_KEYS))
    if reserved:
        raise _error(folder, f"{label} sets {', '.join(reserved)}, which the runner sets "
                             f"(seeds come from 'seeds = [...]')")
    return dict(value)


def _seeds(folder: Path, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise _error(folder, "'seeds' must be a non-empty list of integers, e.g. seeds = [0, 1, 2]")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise _error(folder, f"'seeds' must hold integers >= 0, got {value!r}")
    if len(set(value)) != len(value):
        raise _error(folder, f"'seeds' lists a seed twice: {value!r}")
    return tuple(value)


def _target(folder: Path, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise _error(folder, f"'target-accuracy' must be a number in (0, 1], got {value!r}")
    return float(value)


def _references(folder: Path, value: Any, variants: tuple[Variant, ...]) -> dict[str, str]:
    """``reference`` as variant -> reference variant (each reference maps to itself)."""
    names = [v.name for v in variants]

    def known(name: Any, where: str) -> str:
        if not isinstance(name, str) or name not in names:
            raise _error(folder, f"{where} names {name!r}, which is not a variant; "
                                 f"variants: {', '.join(names)}")
        return name

    if value is None:
        return {}
    if isinstance(value, str):
        ref = known(value, "'reference'")
        return {n: ref for n in names}
    if not isinstance(value, dict) or not value:
        raise _error(folder, "'reference' must be a variant name, or a [reference] table "
                             "mapping each reference variant to the variants compared with it")
    out: dict[str, str] = {}
    for ref, members in value.items():
        known(ref, "[reference]")
        if not isinstance(members, list):
            raise _error(folder, f"[reference] {ref!r} must map to a list of variant names")
        for m in [ref, *members]:
            known(m, f"[reference] {ref!r}")
            if out.get(m, ref) != ref:
                raise _error(folder, f"[reference]: variant {m!r} has two references, "
                                     f"{out[m]!r} and {ref!r}")
            out[m] = ref
    return out


def _fraction(folder: Path, value: Any) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise _error(folder, f"'reference-fraction' must be a number in (0, 1], got {value!r}")
    return float(value)


def _check_config(folder: Path, where: str, raw: Mapping[str, Any]) -> RunConfig:
    try:
        return parse_run_config(raw)
    except BenchmarkError:
        raise
    except ConfigError as exc:
        raise _error(folder, f"{where}: {exc}") from exc


def _variants(folder: Path, data: Mapping[str, Any], base: Mapping[str, Any]
              ) -> tuple[Variant, ...]:
    tables = data.get("variants")
    if not isinstance(tables, dict) or not tables:
        raise _error(folder, "declare at least one variant as a [variants.NAME] table")
    base_cfg = _check_config(folder, "[base]", base).to_dict()
    variants = []
    for name, overrides in tables.items():
        where = f"[variants.{name}]"
        if not _NAME.match(name):
            raise _error(folder, f"{where}: a variant name is letters, digits, '_', '.', '-'")
        overrides = _table(folder, tables, name, where)
        if not overrides:
            raise _error(folder, f"{where} overrides nothing; a variant sets the keys it varies")
        merged = _check_config(folder, where, {**base, **overrides}).to_dict()
        if all(k in base and merged[k] == base_cfg[k] for k in overrides):
            raise _error(folder, f"{where} only repeats [base] values "
                                 f"({', '.join(sorted(overrides))}); it varies nothing")
        variants.append(Variant(name, MappingProxyType(dict(overrides))))
    return tuple(variants)


def load_benchmark(folder: str | Path) -> Benchmark:
    """Read and validate ``folder/benchmark.toml``.

    Parameters
    ----------
    folder
        The benchmark folder; its name is the benchmark's name.

    Returns
    -------
    Benchmark
        The parsed definition. Every variant's merged config is validated with
        :func:`fedpers.config.parse_run_config`.

    Raises
    ------
    BenchmarkError
        An unknown top-level or run-config key, a bad value, an empty seed list, or a
        variant that is empty, only repeats ``[base]`` or equals another variant.
    """
    path = Path(folder)
    data = _read_definition(path)
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise _error(path, f"unknown key(s) {', '.join(map(repr, unknown))} in "
                           f"{DEFINITION_FILE}; valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    if "seeds" not in data:
        raise _error(path, "'seeds' is missing, e.g. seeds = [0, 1, 2]")
    base = _table(path, data, "base", "[base]")
    quick = _table(path, data, "quick", "[quick]")
    variants = _variants(path, data, base)
    bench = Benchmark(name=path.resolve().name, folder=path, base=MappingProxyType(base),
                      variants=variants, seeds=_seeds(path, data["seeds"]),
                      target_accuracy=_target(path, data.get("target-accuracy")),
                      quick=MappingProxyType(quick),
                      quick_variants=_quick_variants(path, data, data.get("variants", {})),
                      references=MappingProxyType(
                          _references(path, data.get("reference"), variants)),
                      reference_fraction=_fraction(path, data.get("reference-fraction")))
    if "reference-fraction" in data and not bench.references:
        raise _error(path, "'reference-fraction' is set but no 'reference' is declared")
    _check_distinct(bench)
    _check_quick(bench)
    return bench


def _quick_variants(folder: Path, data: Mapping[str, Any],
                    variants: Mapping[str, Any]) -> tuple[str, ...]:
    value = data.get("quick-variants", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _error(folder, "'quick-variants' must be a list of variant names")
    unknown = [v for v in value if v not in variants]
    if unknown:
        raise _error(folder, f"'quick-variants' names unknown variant(s) "
                             f"{', '.join(map(repr, unknown))}; variants: "
                             f"{', '.join(variants)}")
    return tuple(value)


def _check_distinct(bench: Benchmark) -> None:
    seen: dict[str, str] = {}
    for v in bench.variants:
        digest = parse_run_config({**bench.base, **v.overrides}).digest()
        if digest in seen:
            raise _error(bench.folder, f"variants {seen[digest]!r} and {v.name!r} give the "
                                       f"same config")
        seen[digest] = v.name


def _check_quick(bench: Benchmark) -> None:
    """``[quick]`` is checked on every load, so a typo there fails full sweeps too."""
    for v in bench.variants:
        _check_config(bench.folder, f"[quick] applied to [variants.{v.name}]",
                      {**bench.base, **v.overrides, **QUICK_DEFAULTS, **bench.quick})


# ----------------------------------------------------------------------- plan
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
            runs.append(PlannedRun(variant.name, seed, _check_config(bench.folder, where, raw)))
    return tuple(runs)


def sweep_hash(bench: Benchmark, runs: tuple[PlannedRun, ...], quick: bool = False) -> str:
    """Identity of a sweep: what it runs, not where it logs (store, experiment)."""
    doc = {"name": bench.name, "target": bench.target_accuracy, "quick": quick,
           "runs": [[r.variant, r.seed, r.digest] for r in runs]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def default_experiment(bench: Benchmark, quick: bool = False) -> str:
    """The benchmark's name; ``NAME-quick`` for ``--quick`` sweeps."""
    return f"{bench.name}-quick" if quick else bench.name


# --------------------------------------------------------------------- MLflow
def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def find_parent(client: Any, experiment_id: str, name: str, digest: str) -> str | None:
    """The most recent parent run of this benchmark + sweep hash, if any."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_BENCH}` = '{_quote(name)}' and "
                      f"tags.`{TAG_HASH}` = '{digest}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def child_runs(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    """Every child of ``parent_id`` (any status), oldest first."""
    return list(client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_id}'",
        order_by=["attributes.start_time ASC"], max_results=10_000))


def _reference_tags(bench: Benchmark) -> dict[str, str]:
    if not bench.references:
        return {}
    return {TAG_REFERENCES: json.dumps(dict(bench.references), separators=(",", ":")),
            TAG_REFERENCE_FRACTION: repr(bench.reference_fraction)}


def _open_parent(bench: Benchmark, runs: tuple[PlannedRun, ...], digest: str, quick: bool,
                 experiment: str, uri: str) -> tuple[Any, str, str]:
    from fedpers.tracking import Tracker, ensure_experiment, resolve_tracking_uri

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
        [exp_id], filter_string=f"tags.`{TAG_BENCH}` = '{_quote(bench.name)}' and "
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


# ------------------------------------------------------------------- progress
@contextmanager
def _watch_rounds(client: Any, run_id: str, on_round: Callable[[int], None],
                  every_s: float = 2.0) -> Iterator[None]:
    """Report the last logged round of ``run_id`` every ``every_s`` seconds."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every_s):
            try:
                hist = client.get_metric_history(run_id, "comm/bytes_up_total")
            except Exception:  # noqa: BLE001 - progress is best effort
                continue
            if hist:
                on_round(max(m.step for m in hist))

    thread = threading.Thread(target=poll, name="fedpers-bench-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 1)


class _Progress:
    """The sweep's progress: on a terminal, a tqdm bar over every round (its rate gives
    the time left); elsewhere (a log file, a pipe) or with the bar off, one plain line
    per finished run, with the time left."""

    def __init__(self, runs: tuple[PlannedRun, ...], done: set[int], enabled: bool) -> None:
        from tqdm.auto import tqdm

        from fedpers.console import interactive

        total = sum(r.cfg.num_server_rounds for r in runs)
        initial = sum(runs[i].cfg.num_server_rounds for i in done)
        self.shown = enabled and interactive()
        self.bar = tqdm(total=total, initial=initial, unit="round", disable=not self.shown,
                        desc=f"sweep ({len(done)}/{len(runs)} runs done)", dynamic_ncols=True)
        self.total_rounds = total
        self.finished_rounds = initial
        self.finished_runs = len(done)
        self.num_runs = len(runs)
        self._start = (time.perf_counter(), initial)
        self._lock = threading.Lock()

    def time_left(self) -> str:
        """The time left at this session's rate of rounds ('' before any round)."""
        t0, rounds0 = self._start
        done = self.finished_rounds - rounds0
        left = self.total_rounds - self.finished_rounds
        if done <= 0 or left <= 0:
            return ""
        secs = (time.perf_counter() - t0) / done * left
        return f", about {secs / 60:.0f} min left" if secs >= 90 else f", about {secs:.0f} s left"

    def at_round(self, rnd: int) -> None:
        with self._lock:
            target = self.finished_rounds + rnd
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)

    def run_done(self, run: PlannedRun) -> None:
        with self._lock:
            self.finished_rounds += run.cfg.num_server_rounds
            self.finished_runs += 1
            self.bar.update(self.finished_rounds - self.bar.n)
            self.bar.set_description(f"sweep ({self.finished_runs}/{self.num_runs} runs done)")
            if not self.shown:
                logger.info("sweep: %d/%d runs done (%s)%s", self.finished_runs, self.num_runs,
                            run.run_name, self.time_left())

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------ run
def _run_child(run: PlannedRun, bench: Benchmark, parent: str, client: Any,
               progress: _Progress, verbose: bool, resources: Any = None) -> str:
    from fedpers.simulation import run_simulation
    from fedpers.tracking import Tracker

    tags = {TAG_PARENT: parent, TAG_BENCH: bench.name, TAG_VARIANT: run.variant,
            TAG_SEED: str(run.seed), TAG_DIGEST: run.digest}
    tracker = Tracker.start(run.cfg.tracking_uri, run.cfg.experiment, run_name=run.run_name,
                            tags=tags)
    progress.bar.set_postfix_str(run.run_name)
    logger.info("running %s (child run %s)", run.run_name, tracker.run_id)
    cfg = run.cfg.replace(**{"mlflow-run-id": tracker.run_id})
    with _watch_rounds(client, tracker.run_id, progress.at_round):
        return run_simulation(cfg, run_name=run.run_name, verbose=verbose,
                              resources=resources)


@contextmanager
def _redirect_logging(enabled: bool) -> Iterator[None]:
    """Route console log lines through tqdm so they do not break the bar (only where
    :class:`_Progress` draws one: ``enabled`` on a terminal)."""
    from fedpers.console import interactive

    if not (enabled and interactive()):
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    def to_console(h: logging.Handler) -> bool:
        return (isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                and h.stream in (sys.stdout, sys.stderr))

    # only loggers that print: a handler added to the root would print Flower's lines twice
    loggers = [lg for lg in map(logging.getLogger, ("", "fedpers", "flwr"))
               if any(map(to_console, lg.handlers))]
    with logging_redirect_tqdm(loggers):
        yield


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
        Small budget (:data:`QUICK_DEFAULTS`, then ``[quick]``), first seed only
        unless ``seeds`` is given.
    experiment
        MLflow experiment ('' = :func:`default_experiment`).
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
    from fedpers.tracking import resolve_tracking_uri

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
    bar = _Progress(runs, reused_idx, progress)
    started = time.perf_counter()
    try:
        with _redirect_logging(progress):
            for i, run in enumerate(runs):
                if i in reused_idx:
                    continue
                try:
                    ran.append(_run_child(run, bench, parent, client, bar, verbose,
                                          resources))
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
    from fedpers.tracking import ui_url

    logger.info("in MLflow's UI (mlflow ui --backend-store-uri %s): %s", uri,
                ui_url("http://127.0.0.1:5000", exp_id, parent))
    logger.info("benchmark %s finished in %.0f s: %d ran, %d reused, %d failed",
                bench.name, time.perf_counter() - started, len(ran), len(reused_idx),
                len(failed))
    return SweepResult(parent_run_id=parent, experiment=experiment, tracking_uri=uri,
                       ran=tuple(ran), reused=tuple(done[(runs[i].variant, runs[i].digest)]
                                                    for i in sorted(reused_idx)),
                       failed=tuple(failed))
