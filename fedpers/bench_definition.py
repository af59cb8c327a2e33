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

Loading checks the whole definition before anything runs (:class:`BenchmarkError`,
one line naming the folder and the key); :mod:`fedpers.bench_plan` turns it into
runs, :mod:`fedpers.bench_sweep` runs them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedpers.config import ConfigError, RunConfig, parse_run_config

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


def check_config(folder: Path, where: str, raw: Mapping[str, Any]) -> RunConfig:
    """``raw`` as a validated run config; an error names the benchmark and ``where``."""
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
    base_cfg = check_config(folder, "[base]", base).to_dict()
    variants = []
    for name, overrides in tables.items():
        where = f"[variants.{name}]"
        if not _NAME.match(name):
            raise _error(folder, f"{where}: a variant name is letters, digits, '_', '.', '-'")
        overrides = _table(folder, tables, name, where)
        if not overrides:
            raise _error(folder, f"{where} overrides nothing; a variant sets the keys it varies")
        merged = check_config(folder, where, {**base, **overrides}).to_dict()
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
        check_config(bench.folder, f"[quick] applied to [variants.{v.name}]",
                      {**bench.base, **v.overrides, **QUICK_DEFAULTS, **bench.quick})
