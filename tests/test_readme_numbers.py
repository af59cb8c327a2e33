"""Every number in a benchmark README's results tables is in a committed report file.

The rule, per ``benchmarks/NAME/README.md``:

- **Which tables**: every Markdown table after the first ``## Results`` (or ``## Result``)
  heading, to the end of the file. Tables before it (expected sizes worked out by hand,
  settings) are not results and are not checked. A README without that heading fails.
- **Which cells**: every body cell except the first column (it names the row: variant,
  method, aggregator) and columns headed ``seeds`` or ``reference``; header rows are
  skipped. A cell may hold several numbers (``0.7248 ± 0.0054``, ``0.907 ± 0.016 (+21.6)``,
  ``22.0 (2/3)``): each is checked on its own. Text (``not reached``, ``-``) has none.
- **Where**: the benchmark's committed ``report/`` folder and its subfolders: ``*.md``,
  ``*.csv`` and ``*.csv.gz`` files (``summary.md``, ``summary.csv``, ``reference.csv``,
  ``welch.csv``, ``comparison.md``, ...). Every number in them is a source value ``v``, filed under
  the variant whose row it is in (a CSV's ``variant`` column; the first cell of a
  Markdown table row, when that names a variant) or, outside any variant's row (prose,
  other files), under no variant.
- **Same row**: a README row is labelled by its first cell, up to `` (`` (so
  ``topk-q8-ef (1%)`` is ``topk-q8-ef``). A number in it may come from the rows of the
  variant named by the label, or of ``LABEL-SUFFIX`` where ``SUFFIX`` is a run of whole
  words of the column header (``local`` under ``a0.1 mean`` is ``local-a0.1``; ``mean``
  under ``sign-flip 10%`` is ``mean-sign-flip-10``), or from numbers under no variant.
  So a number copied from another variant's row fails.
- **Match**: a printed number with ``d`` decimals matches when some ``v``, ``100 v``
  (accuracy points from a fraction), ``v / 1e6`` (MB from bytes) or ``1 / v`` (a ratio
  printed the other way round, "fp32 ÷ this") rounds to it at ``d`` decimals (half a unit
  in the last printed place; ``0.5969`` matches ``0.5968666``, ``0.5970`` does not).
  ``−`` (U+2212) reads as a minus, ``,`` between digit groups as nothing, ``**`` as
  nothing, a trailing ``x`` as nothing.
- **k/n markers** (``3/3``, ``(2/3)``): ``k <= n``, and both ``k`` and ``n`` occur in
  the report files as whole numbers. This is the weakest part of the rule: small counts
  are common.

Benchmarks without a ``report/`` folder are excluded below, each with its reason.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

BENCHMARKS_DIR = ROOT / "benchmarks"

#: Benchmarks whose README numbers are not checked, and why.
EXCLUDED: dict[str, str] = {
    "codec_speed": (
        "speed benchmark: run.py prints single timing measurements of encode/decode; "
        "the README gives the command, commit and date, and there is no committed run "
        "output to check against (rerunning changes every figure)"
    ),
    "overhead": (
        "speed benchmark: run.py prints seconds per round and ratios of one measurement "
        "per setting, with the command, commit and date in the README; no report/ folder"
    ),
    "scale": (
        "speed benchmark: run.py prints start-up, seconds per round and peak memory of "
        "one measurement per size, with the command, commit and date; no report/ folder"
    ),
}

_RESULTS_HEADING = re.compile(r"^##\s+Results?\b.*$", re.MULTILINE)
_SKIPPED_HEADERS = {"seeds", "reference"}
_KN = re.compile(r"(?<![\d.])(\d+)/(\d+)(?![\d.])")
_NUMBER = re.compile(r"(?<![\w.])[+\-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


@dataclass(frozen=True)
class Unmatched:
    """One printed number found in no report file."""

    line: int
    row: str
    column: str
    text: str

    def __str__(self) -> str:
        return f"line {self.line}, row {self.row!r}, column {self.column!r}: {self.text}"


def _normalise(text: str) -> str:
    return text.replace("−", "-").replace("**", "").replace("`", "")


def _split_row(line: str) -> list[str]:
    cells = line.strip().strip("|").split("|")
    return [c.strip() for c in cells]


def results_tables(readme: str) -> list[tuple[int, list[str], list[tuple[int, list[str]]]]]:
    """The results tables of a README: (line of header, header cells, [(line, cells)]).

    Raises
    ------
    ValueError
        If the README has no ``## Results`` heading.
    """
    m = _RESULTS_HEADING.search(readme)
    if m is None:
        raise ValueError("README has no '## Results' heading: its results tables cannot be found")
    return _tables(readme.splitlines(), readme[: m.start()].count("\n") + 1)


def _tables(
    lines: list[str], first: int
) -> list[tuple[int, list[str], list[tuple[int, list[str]]]]]:
    """Markdown tables in ``lines[first:]``: (header line, header cells, [(line, cells)])."""
    tables = []
    i = first
    while i < len(lines):
        if (
            lines[i].lstrip().startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*", lines[i + 1])
        ):
            header = _split_row(lines[i])
            body = []
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                body.append((j + 1, _split_row(lines[j])))
                j += 1
            tables.append((i + 1, header, body))
            i = j
        else:
            i += 1
    return tables


def _numbers_in_text(text: str) -> list[float]:
    return [float(t.replace(",", "")) for t in _NUMBER.findall(_normalise(text))]


@dataclass(frozen=True)
class ReportNumbers:
    """The numbers of one report folder.

    Attributes
    ----------
    rows : dict[str, np.ndarray]
        Per variant, every number in a row naming it.
    loose : np.ndarray
        Numbers in no variant's row.
    whole : frozenset[int]
        Every whole number anywhere (for ``k/n`` markers).
    """

    rows: dict[str, np.ndarray]
    loose: np.ndarray
    whole: frozenset[int]


def _cell_numbers(cell: str) -> list[float]:
    try:
        return [float(cell)]
    except ValueError:
        return _numbers_in_text(cell)


def report_numbers(report_dir: Path) -> ReportNumbers:
    """Every number in a report folder's ``*.md``, ``*.csv`` and ``*.csv.gz`` files, its
    subfolders' included (an earlier sweep kept beside a rerun, e.g. ``report/earlier/``)."""
    texts: dict[Path, str] = {}
    for path in sorted(p for p in report_dir.rglob("*") if p.is_file()):
        if path.name.endswith(".csv.gz"):
            texts[path] = gzip.decompress(path.read_bytes()).decode()
        elif path.suffix in (".csv", ".md"):
            texts[path] = path.read_text()
    rows: dict[str, list[float]] = {}
    loose: list[float] = []
    csvs = {p: list(csv.reader(io.StringIO(t))) for p, t in texts.items() if p.suffix != ".md"}
    variants = {r[h.index("variant")] for h, *body in csvs.values() if "variant" in h for r in body}
    for table in csvs.values():
        header, body = table[0], table[1:]
        col = header.index("variant") if "variant" in header else None
        for row in body:
            nums = [v for cell in row for v in _cell_numbers(cell)]
            if col is not None:
                rows.setdefault(row[col], []).extend(nums)
            else:
                loose.extend(nums)
    for path, text in texts.items():
        if path.suffix != ".md":
            continue
        lines = text.splitlines()
        in_rows: set[int] = set()
        for _, _, body in _tables(lines, 0):
            for line, cells in body:
                in_rows.add(line - 1)
                key = _normalise(cells[0]).strip()
                nums = [v for cell in cells[1:] for v in _numbers_in_text(cell)]
                (rows.setdefault(key, []) if key in variants else loose).extend(nums)
        loose.extend(
            v for i, ln in enumerate(lines) if i not in in_rows for v in _numbers_in_text(ln)
        )

    def finite(values: list[float]) -> np.ndarray:
        return np.array([v for v in values if np.isfinite(v)], dtype=float)

    every = [v for vs in rows.values() for v in vs] + loose
    whole = frozenset(int(v) for v in every if np.isfinite(v) and v == int(v))
    return ReportNumbers({k: finite(v) for k, v in rows.items()}, finite(loose), whole)


def row_variants(label: str, header: str, variants: list[str]) -> list[str]:
    """The variants a README cell's numbers may come from (see the module docstring)."""
    name = _normalise(label).split(" (")[0].strip()
    words = (
        "-" + re.sub(r"[^\w.]+", "-", _normalise(header).lower().replace("%", "")).strip("-") + "-"
    )
    return [
        v
        for v in variants
        if v == name or (v.startswith(name + "-") and f"-{v[len(name) + 1 :]}-" in words)
    ]


def candidates(values: np.ndarray) -> np.ndarray:
    """What a printed number may be: ``v``, ``100 v``, ``v / 1e6`` or ``1 / v``."""
    return np.concatenate([values, 100 * values, values / 1e6, 1 / values[values != 0]])


def _matches(token: str, pool: np.ndarray) -> bool:
    decimals = len(token.split(".")[1]) if "." in token else 0
    value = float(token.replace(",", ""))
    tol = 0.5 * 10.0**-decimals * (1 + 1e-9) + 1e-12
    return bool(np.any(np.abs(pool - value) <= tol))


def check_readme(readme_path: Path, report_dir: Path) -> list[Unmatched]:
    """Numbers in the results tables of ``readme_path`` found in no file of ``report_dir``.

    Raises
    ------
    ValueError
        If the README has no ``## Results`` heading or ``report_dir`` is missing.
    """
    if not report_dir.is_dir():
        raise ValueError(f"{report_dir}: no report folder to check {readme_path.name} against")
    numbers = report_numbers(report_dir)
    variants = sorted(numbers.rows)
    pools: dict[tuple[str, ...], np.ndarray] = {}
    unmatched = []
    for _, header, body in results_tables(readme_path.read_text()):
        for line, cells in body:
            for col, cell in enumerate(cells):
                name = header[col] if col < len(header) else ""
                if col == 0 or _normalise(name).strip().lower() in _SKIPPED_HEADERS:
                    continue
                text = _normalise(cell)
                for k, n in _KN.findall(text):
                    if not (
                        int(k) <= int(n) and int(k) in numbers.whole and int(n) in numbers.whole
                    ):
                        unmatched.append(Unmatched(line, cells[0], name, f"{k}/{n}"))
                text = _KN.sub(" ", text)
                tokens = _NUMBER.findall(text)
                if not tokens:
                    continue
                key = tuple(row_variants(cells[0], name, variants))
                if key not in pools:
                    own = [numbers.rows[v] for v in key]
                    pools[key] = candidates(np.concatenate([numbers.loose, *own]))
                pool = pools[key]
                for token in tokens:
                    if not _matches(token, pool):
                        unmatched.append(Unmatched(line, cells[0], name, token))
    return unmatched


def _benchmark_folders() -> list[str]:
    return sorted(p.parent.name for p in BENCHMARKS_DIR.glob("*/README.md"))


CHECKED = [name for name in _benchmark_folders() if name not in EXCLUDED]


@pytest.mark.parametrize("name", CHECKED)
def test_readme_results_numbers_are_in_committed_report_files(name: str) -> None:
    folder = BENCHMARKS_DIR / name
    unmatched = check_readme(folder / "README.md", folder / "report")
    assert not unmatched, (
        f"benchmarks/{name}/README.md: {len(unmatched)} number(s) in its results tables are in "
        f"no file of benchmarks/{name}/report/:\n" + "\n".join(str(u) for u in unmatched)
    )


@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_excluded_benchmarks_are_speed_benchmarks_without_report(name: str) -> None:
    folder = BENCHMARKS_DIR / name
    assert (folder / "run.py").is_file(), (
        f"benchmarks/{name}: excluded as a speed benchmark but has no run.py"
    )
    assert not (folder / "report").exists(), (
        f"benchmarks/{name}/report exists: check its README against it instead of excluding it"
    )


def test_every_benchmark_folder_is_checked_or_excluded() -> None:
    folders = {
        p.name for p in BENCHMARKS_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    }
    assert folders == set(CHECKED) | set(EXCLUDED)


# --- the checker itself, on a fake benchmark -------------------------------------------

_FAKE_SUMMARY = """variant,seeds,global_acc_mean,global_acc_std,bytes_up
fp32,3,0.5968666,0.0123456,38246200.0
q8,3,0.7257000000000001,0.005716642371182528,9779600.0
"""
_FAKE_REFERENCE = """variant,reference,seeds,seeds_reaching_goal,acc_delta_points,bytes_up_ratio
q8,fp32,3,2,12.883333,0.25570121999048273
"""


def _fake(tmp_path: Path, rows: str, before: str = "") -> tuple[Path, Path]:
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.csv").write_text(_FAKE_SUMMARY)
    with gzip.open(report / "reference.csv.gz", "wt") as f:
        f.write(_FAKE_REFERENCE)
    readme = tmp_path / "README.md"
    readme.write_text(
        "# fake\n\n"
        f"{before}\n"
        "## Results\n\nRun 2026-11-26, 3 seeds.\n\n"
        "| variant (1%) | seeds | global acc | Δ (points) | MB up | fp32 ÷ this | reached |\n"
        "|---|---|---|---:|---:|---:|---|\n"
        f"{rows}\n\n"
        "### Findings\n\nProse numbers such as 0.1234 are not checked.\n"
    )
    return readme, report


_GOOD_ROW = "| **q8** (2026) | 7 | 0.7257 ± 0.0057 | +12.88 | 9.78 | 3.9x | 2/3 |"


def test_checker_accepts_numbers_from_the_report(tmp_path: Path) -> None:
    readme, report = _fake(
        tmp_path, _GOOD_ROW + "\n| fp32 | 3 | 0.5969 ± 0.012 | 0 | 38.25 | 1 | not reached |"
    )
    assert check_readme(readme, report) == []


@pytest.mark.parametrize(
    ("row", "bad"),
    [
        ("| q8 | 3 | 0.7312 ± 0.0057 | +12.88 | 9.78 | 3.9 | 2/3 |", "0.7312"),  # made-up accuracy
        ("| q8 | 3 | 0.7257 ± 0.0071 | +12.88 | 9.78 | 3.9 | 2/3 |", "0.0071"),  # made-up std
        ("| q8 | 3 | 0.7257 ± 0.0057 | −11.50 | 9.78 | 3.9 | 2/3 |", "-11.50"),  # made-up Δ
        ("| q8 | 3 | 0.7257 ± 0.0057 | +12.88 | 9.87 | 3.9 | 2/3 |", "9.87"),  # made-up MB
        ("| q8 | 3 | 0.7257 ± 0.0057 | +12.88 | 9.78 | 4.1x | 2/3 |", "4.1"),  # made-up ratio
        ("| fp32 | 3 | 0.5970 | 0 | 38.25 | 1 | - |", "0.5970"),  # 0.5968666 is 0.5969
        ("| q8 | 3 | 0.7257 | +12.88 | 9.78 | 3.9 | 4/3 |", "4/3"),  # k > n
        ("| q8 | 3 | 0.7257 | +12.88 | 9.78 | 3.9 | 1/5 |", "1/5"),  # counts in no file
    ],
)
def test_checker_rejects_a_made_up_number(tmp_path: Path, row: str, bad: str) -> None:
    readme, report = _fake(tmp_path, row)
    assert [u.text for u in check_readme(readme, report)] == [bad]


def test_checker_takes_a_rows_numbers_from_its_own_variant(tmp_path: Path) -> None:
    # fp32's accuracy and MB are in the report, but not in q8's rows
    readme, report = _fake(tmp_path, "| q8 | 3 | 0.5969 ± 0.0057 | +12.88 | 38.25 | 3.9 | 2/3 |")
    assert [u.text for u in check_readme(readme, report)] == ["0.5969", "38.25"]
    # a label is a variant, or a variant's prefix completed by words of the column header
    assert row_variants("local (x)", "a0.1 mean", ["local-a0.1", "local-a0.5", "none-a0.1"]) == [
        "local-a0.1"
    ]
    assert row_variants("mean", "sign-flip 10%", ["mean-sign-flip-10", "mean-clean"]) == [
        "mean-sign-flip-10"
    ]
    assert row_variants("q8", "Δ vs ref (points)", ["q8", "q8-ef"]) == ["q8"]


def test_checker_ignores_tables_before_results_and_the_first_column(tmp_path: Path) -> None:
    before = "## Expected\n\n| codec | bytes |\n|---|---:|\n| q8 | 48,640 |\n"
    readme, report = _fake(
        tmp_path, "| q8 (99.99) | 3 | 0.7257 | +12.88 | 9.78 | 3.9 | 2/3 |", before
    )
    assert check_readme(readme, report) == []
    readme.write_text(readme.read_text() + "\n| a | b |\n|---|---|\n| x | 5.55 |\n")
    assert [u.text for u in check_readme(readme, report)] == ["5.55"]


def test_checker_needs_a_results_heading_and_a_report(tmp_path: Path) -> None:
    readme, report = _fake(tmp_path, _GOOD_ROW)
    readme.write_text(readme.read_text().replace("## Results", "## Outcome"))
    with pytest.raises(ValueError, match="no '## Results' heading"):
        check_readme(readme, report)
    with pytest.raises(ValueError, match="no report folder"):
        check_readme(readme, tmp_path / "missing")
