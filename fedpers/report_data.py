"""What a report is made of, read from MLflow or from the CSV files a report writes.

A report is computed from two things only: :class:`ReportMeta` (the benchmark's
settings, from the parent run's tags) and one :class:`ChildRun` per finished child
run (its metric histories at the evaluated rounds and its clients' final metrics).
:func:`write_data` writes both as ``runs.csv``, ``clients.csv`` and ``report.json``
(CSVs over :data:`GZIP_OVER` bytes as ``.csv.gz``); :func:`read_data` reads them
back, so ``fedpers report --from-csv DIR`` gives the same numbers with no MLflow.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedpers.bench_tags import (
    TAG_BENCH,
    TAG_HASH,
    TAG_REFERENCE_FRACTION,
    TAG_REFERENCES,
    TAG_RUN_NAME,
    TAG_SEED,
    TAG_TARGET,
    TAG_VARIANT,
    TAG_VARIANTS,
    child_runs,
)

logger = logging.getLogger(__name__)

ACC = "eval/global_accuracy"
AUROC = "eval/global_auroc"
UP_TOTAL = "comm/bytes_up_total"
DOWN_TOTAL = "comm/bytes_down_total"
TIME_TOTAL = "time/total_s"
#: Metric families copied into ``runs.csv`` (every key logged under these prefixes).
PREFIXES = ("eval/", "comm/", "time/", "fairness/", "clients/")
CLIENT_ID = "partition-id"  # the client column of a run's client_metrics.csv
RUNS_CSV = "runs.csv"
CLIENTS_CSV = "clients.csv"
META_JSON = "report.json"
GZIP_OVER = 1_000_000  # bytes: larger CSVs are written gzipped
CLASSIFICATION = "classification"
ANOMALY = "anomaly"


class ReportError(ValueError):
    """Nothing to report: no such experiment, run or folder, or no finished child runs."""


@dataclass(frozen=True)
class ChildRun:
    """What the report needs from one finished child run.

    ``history`` maps a metric key to ``(round, value)`` pairs at the evaluated rounds;
    ``clients`` holds one mapping per client of the last evaluation round (client id
    under :data:`CLIENT_ID`, metric columns as floats).
    """

    run_id: str
    variant: str
    history: Mapping[str, tuple[tuple[int, float], ...]]
    clients: tuple[Mapping[str, float], ...] = ()
    seed: int | None = None

    @property
    def client_accuracy(self) -> tuple[float, ...]:
        return self.client_values("accuracy")

    def client_values(self, column: str) -> tuple[float, ...]:
        return tuple(c[column] for c in self.clients if column in c)

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
class ReportMeta:
    """The benchmark settings a report needs (from the parent run's tags)."""

    parent_run_id: str
    name: str
    variants: tuple[str, ...]
    target: float | None
    # variant -> the variant it is compared with
    references: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    reference_fraction: float = 1.0
    kind: str = CLASSIFICATION
    experiment_id: str = ""
    # the round selection a report used (see fedpers.report_tables.Selection)
    last: int | None = None
    best: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"benchmark": self.name, "parent_run_id": self.parent_run_id,
                "variants": list(self.variants), "target_accuracy": self.target,
                "references": dict(self.references),
                "reference_fraction": self.reference_fraction, "task_kind": self.kind,
                "selection": {"last": self.last, "best": self.best}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: Path) -> ReportMeta:
        try:
            return cls(parent_run_id=str(data["parent_run_id"]), name=str(data["benchmark"]),
                       variants=tuple(data["variants"]), target=data["target_accuracy"],
                       references=MappingProxyType(dict(data["references"])),
                       reference_fraction=float(data["reference_fraction"]),
                       kind=str(data["task_kind"]),
                       last=data.get("selection", {}).get("last"),
                       best=bool(data.get("selection", {}).get("best", False)))
        except KeyError as exc:
            raise ReportError(f"{where}: key {exc.args[0]!r} is missing") from exc


# ------------------------------------------------------------------ MLflow
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


def resolve_source(client: Any, target: str) -> ReportMeta:
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
    return ReportMeta(parent_id, tags.get(TAG_BENCH) or tags.get(TAG_RUN_NAME) or parent_id,
                      variants, target_acc, MappingProxyType(refs),
                      float(tags.get(TAG_REFERENCE_FRACTION) or 1.0),
                      experiment_id=parent.info.experiment_id)


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


def _float_cells(row: Mapping[str, str]) -> dict[str, float]:
    """The numeric cells of a CSV row (empty or non-numeric cells left out)."""
    out = {}
    for k, v in row.items():
        if k is None or v in (None, ""):
            continue
        try:
            out[k] = float(v)
        except ValueError:
            continue
    return out


def _client_rows(client: Any, run_id: str) -> tuple[dict[str, float], ...]:
    """The run's ``client_metrics.csv`` (clients of the last evaluation round)."""
    names = {a.path for a in client.list_artifacts(run_id)}
    if "client_metrics.csv" not in names:
        return ()
    with tempfile.TemporaryDirectory() as tmp, _no_download_bars():
        path = client.download_artifacts(run_id, "client_metrics.csv", tmp)
        with open(path, newline="") as fh:
            return tuple(_float_cells(r) for r in csv.DictReader(fh))


def _at_evaluated_rounds(history: dict[str, tuple]) -> dict[str, tuple]:
    """Every history restricted to the rounds where some ``eval/`` metric was logged
    (all rounds when none was)."""
    steps = {s for k, h in history.items() if k.startswith("eval/") for s, _ in h}
    if not steps:
        return history
    kept = {k: tuple(p for p in h if p[0] in steps) for k, h in history.items()}
    return {k: h for k, h in kept.items() if h}


def _history(client: Any, run_id: str, keys: Sequence[str]) -> dict[str, tuple]:
    out = {}
    for key in keys:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        if points:
            out[key] = tuple(points)
    return _at_evaluated_rounds(out)


_SEED_IN_NAME = re.compile(r"(?:^|/)seed=(\d+)$")


def _seed(run: Any) -> int | None:
    """The run's seed: tag ``fedpers.bench.seed``, else param ``seed``, else the
    ``.../seed=N`` suffix of its run name."""
    for text in (run.data.tags.get(TAG_SEED), run.data.params.get("seed")):
        if text not in (None, ""):
            try:
                return int(text)
            except ValueError:
                pass
    match = _SEED_IN_NAME.search(run.data.tags.get(TAG_RUN_NAME, ""))
    return int(match.group(1)) if match else None


def order_runs(children: Sequence[ChildRun], variants: Sequence[str]) -> list[ChildRun]:
    """Variants in ``variants`` order first (the rest by name), then by seed and run id,
    so that every sum over seeds adds in the same order from MLflow and from CSV."""
    rank = {v: i for i, v in enumerate(variants)}
    return sorted(children, key=lambda c: (rank.get(c.variant, len(rank)), c.variant,
                                           c.seed is None, c.seed or 0, c.run_id))


def task_kind(children: Sequence[ChildRun]) -> str:
    return ANOMALY if any(AUROC in c.history for c in children) else CLASSIFICATION


def read_children(client: Any, source: ReportMeta) -> list[ChildRun]:
    """The finished child runs of ``source``'s parent, with their metric histories."""
    children = []
    for run in child_runs(client, source.experiment_id, source.parent_run_id):
        if run.info.status != "FINISHED":
            continue
        tags = run.data.tags
        variant = tags.get(TAG_VARIANT) or tags.get(TAG_RUN_NAME) or run.info.run_id
        keys = sorted(k for k in run.data.metrics if k.startswith(PREFIXES))
        children.append(ChildRun(run.info.run_id, variant, _history(client, run.info.run_id, keys),
                                 _client_rows(client, run.info.run_id), _seed(run)))
    if not children:
        raise ReportError(f"parent run {source.parent_run_id} has no finished child runs")
    return order_runs(children, source.variants)


# --------------------------------------------------------------------- CSV
def _cell(value: float | int | None) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _write_table(folder: Path, name: str, header: Sequence[str],
                 rows: Sequence[Sequence[str]]) -> Path:
    """``name`` in ``folder``, or ``name.gz`` when the text is over :data:`GZIP_OVER`
    bytes (the other of the two is removed, so a folder never holds both)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode()
    plain, packed = folder / name, folder / f"{name}.gz"
    if len(data) > GZIP_OVER:
        plain.unlink(missing_ok=True)
        packed.write_bytes(gzip.compress(data, mtime=0))
        return packed
    packed.unlink(missing_ok=True)
    plain.write_bytes(data)
    return plain


def write_data(meta: ReportMeta, children: Sequence[ChildRun], folder: Path) -> list[Path]:
    """``runs.csv``, ``clients.csv`` and ``report.json``: everything the report is
    computed from."""
    keys = sorted({k for c in children for k in c.history})
    runs_rows = []
    for c in children:
        by_step: dict[int, dict[str, float]] = {}
        for key, points in c.history.items():
            for step, value in points:
                by_step.setdefault(step, {})[key] = value
        for step in sorted(by_step):
            values = by_step[step]
            runs_rows.append([c.variant, _cell(c.seed), c.run_id, str(step),
                              *(_cell(values.get(k)) for k in keys)])
    columns = sorted({k for c in children for row in c.clients for k in row} - {CLIENT_ID})
    client_rows = []
    for c in children:
        for row in c.clients:
            cid = row.get(CLIENT_ID)
            client_rows.append([c.variant, _cell(c.seed), c.run_id,
                                "" if cid is None else str(int(cid)),
                                *(_cell(row.get(k)) for k in columns)])
    paths = [_write_table(folder, RUNS_CSV, ["variant", "seed", "run_id", "round", *keys],
                          runs_rows),
             _write_table(folder, CLIENTS_CSV, ["variant", "seed", "run_id", "client", *columns],
                          client_rows)]
    (folder / META_JSON).write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    return [*paths, folder / META_JSON]


def _open_table(folder: Path, name: str) -> list[dict[str, str]]:
    plain, packed = folder / name, folder / f"{name}.gz"
    if plain.exists():
        text = plain.read_text()
    elif packed.exists():
        text = gzip.decompress(packed.read_bytes()).decode()
    else:
        raise ReportError(f"{plain} (or {packed.name}) not found: --from-csv needs the "
                          f"folder a report was written to")
    return list(csv.DictReader(io.StringIO(text)))


def read_data(folder: str | Path) -> tuple[ReportMeta, list[ChildRun]]:
    """The metadata and child runs written by :func:`write_data`."""
    folder = Path(folder)
    meta_path = folder / META_JSON
    if not meta_path.exists():
        raise ReportError(f"{meta_path} not found: --from-csv needs the folder a report "
                          f"was written to")
    try:
        meta = ReportMeta.from_json(json.loads(meta_path.read_text()), meta_path)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{meta_path}: not valid JSON ({exc})") from exc
    histories: dict[str, dict[str, list[tuple[int, float]]]] = {}
    ident: dict[str, tuple[str, int | None]] = {}
    for row in _open_table(folder, RUNS_CSV):
        rid = row["run_id"]
        ident.setdefault(rid, (row["variant"], int(row["seed"]) if row["seed"] else None))
        hist = histories.setdefault(rid, {})
        step = int(row["round"])
        for key, text in row.items():
            if key not in ("variant", "seed", "run_id", "round") and text:
                hist.setdefault(key, []).append((step, float(text)))
    clients: dict[str, list[dict[str, float]]] = {}
    for row in _open_table(folder, CLIENTS_CSV):
        cells = _float_cells({k: v for k, v in row.items()
                              if k not in ("variant", "seed", "run_id", "client")})
        if row["client"]:
            cells = {CLIENT_ID: float(row["client"]), **cells}
        clients.setdefault(row["run_id"], []).append(cells)
        ident.setdefault(row["run_id"], (row["variant"],
                                         int(row["seed"]) if row["seed"] else None))
    children = [ChildRun(rid, variant, {k: tuple(sorted(v)) for k, v in
                                        histories.get(rid, {}).items()},
                         tuple(clients.get(rid, ())), seed)
                for rid, (variant, seed) in ident.items()]
    if not children:
        raise ReportError(f"{folder / RUNS_CSV} holds no runs")
    return meta, order_runs(children, meta.variants)
