"""The layout of the packages: no long modules, no import circles.

Two checks over the modules of ``fedpers``, ``strategies`` and ``clients``:

- no module is longer than :data:`MAX_LINES` lines, except the files listed in
  :data:`ALLOWED_LONG` (being split now), each at most its listed size; a listed file
  that is short enough fails too, so the list only shrinks;
- no import circle among the modules, counting imports inside functions; only imports
  under ``if TYPE_CHECKING:`` are exempt. The circles listed in :data:`KNOWN_CYCLES`
  (being broken now) must be exactly the circles found: one that was broken, or that
  lost a member, fails until its entry is removed or updated, so the list only shrinks.

Each checker also runs on a tiny package written to ``tmp_path``, so it is known to
find what it looks for.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedpers", "strategies", "clients")
MAX_LINES = 400

#: Modules over MAX_LINES that other work is splitting now, with their size (lines)
#: when listed. A listed file may shrink but not grow; once it is at most MAX_LINES
#: long the test asks for its entry to be removed.
ALLOWED_LONG: dict[str, int] = {}

#: Import circles that other work is breaking now, each exactly as found (the modules
#: of one strongly connected component of the import graph), under a name that says
#: which. None today: the circle through fedpers.config and the registries is broken.
KNOWN_CYCLES: dict[str, frozenset[str]] = {}


# ------------------------------------------------------------------------ modules
def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def long_module_errors(root: Path, packages: Iterable[str], allowed: Mapping[str, int],
                       limit: int = MAX_LINES) -> list[str]:
    """What is wrong with the module lengths: one line per problem."""
    errors = []
    sizes = {path.relative_to(root).as_posix(): line_count(path)
             for path in module_files(root, packages).values()}
    for rel, size in sorted(sizes.items()):
        if size <= limit:
            continue
        if rel not in allowed:
            errors.append(f"{rel} has {size} lines (limit {limit}): split it by job")
        elif size > allowed[rel]:
            errors.append(f"{rel} grew to {size} lines (listed at {allowed[rel]} in "
                          f"ALLOWED_LONG): it may only shrink")
    for rel in sorted(allowed):
        if rel not in sizes:
            errors.append(f"{rel} is listed in ALLOWED_LONG but does not exist: remove it")
        elif sizes[rel] <= limit:
            errors.append(f"{rel} has {sizes[rel]} lines, within the limit: remove it from "
                          f"ALLOWED_LONG")
    return errors


# ------------------------------------------------------------------------ imports
def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:  # the else branch runs
                if isinstance(other, (ast.Import, ast.ImportFrom)):
                    yield other
                else:
                    yield from _import_nodes(other)
        else:
            yield from _import_nodes(child)


def _known_prefix(name: str, known: Mapping[str, Path]) -> str | None:
    """``name`` or its longest dotted prefix that is one of our modules."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, known: Mapping[str, Path]) -> set[str]:
    """The modules of ``known`` that ``module`` imports (anywhere but TYPE_CHECKING).

    ``import a.b`` and ``from a import b`` where ``a.b`` is a module both mean ``a.b``;
    ``from a import name`` means ``a``. Relative imports are resolved against the
    module's package. The implicit import of a parent package's ``__init__`` is not
    counted.
    """
    path = known[module]
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".") if package else []
                up = node.level - 1
                if up > len(base_parts):
                    continue  # beyond the top: not ours
                base_parts = base_parts[:len(base_parts) - up]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                targets.append(sub if sub in known else base)
        for target in targets:
            hit = _known_prefix(target, known) if target else None
            if hit is not None and hit != module:
                found.add(hit)
    return found


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    known = module_files(root, packages)
    return {module: imports_of(module, known) for module in known}


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.add(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(frozenset(members))
    return found


def cycle_errors(root: Path, packages: Iterable[str],
                 known_cycles: Mapping[str, frozenset[str]]) -> list[str]:
    """What is wrong with the import circles: one line per problem."""
    graph = import_graph(root, packages)
    cycles = strongly_connected(graph)
    listed = {members: name for name, members in known_cycles.items()}
    errors = []
    for members in sorted(cycles, key=lambda m: sorted(m)):
        if members in listed:
            continue
        near = [name for name, known in known_cycles.items() if members & known]
        names = ", ".join(sorted(members))
        if near:
            errors.append(f"import circle {near[0]!r} changed: it is now {{{names}}}; update "
                          f"its KNOWN_CYCLES entry to exactly that (it may only shrink)")
        else:
            path = " -> ".join(_one_circle(graph, members))
            errors.append(f"new import circle among {{{names}}}, e.g. {path}")
    for name, members in sorted(known_cycles.items()):
        if members not in cycles and not any(c & members for c in cycles):
            errors.append(f"import circle {name!r} no longer exists: remove it from "
                          f"KNOWN_CYCLES")
    return errors


def _one_circle(graph: Mapping[str, Iterable[str]], members: frozenset[str]) -> list[str]:
    """One concrete circle through the component, for the error message."""
    start = min(members)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    return [*paths[node], start]
                if nxt in members and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return sorted(members)


# -------------------------------------------------------------------- the checks
def test_no_module_is_too_long():
    errors = long_module_errors(ROOT, PACKAGES, ALLOWED_LONG)
    assert not errors, "\n".join(errors)


def test_no_import_circles():
    errors = cycle_errors(ROOT, PACKAGES, KNOWN_CYCLES)
    assert not errors, "\n".join(errors)


# ------------------------------------------------------- the checkers themselves
def _write(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_long_module_check_finds_new_grown_and_stale_entries(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/ok.py": "x = 1\n" * 10,
                      "pkg/long.py": "x = 1\n" * 11, "pkg/listed.py": "x = 1\n" * 12})
    assert long_module_errors(tmp_path, ["pkg"], {"pkg/long.py": 11, "pkg/listed.py": 12},
                              limit=10) == []
    errors = long_module_errors(tmp_path, ["pkg"], {"pkg/listed.py": 12}, limit=10)
    assert errors == ["pkg/long.py has 11 lines (limit 10): split it by job"]
    errors = long_module_errors(tmp_path, ["pkg"], {"pkg/long.py": 11, "pkg/listed.py": 11},
                                limit=10)
    assert errors == ["pkg/listed.py grew to 12 lines (listed at 11 in ALLOWED_LONG): it "
                      "may only shrink"]
    errors = long_module_errors(tmp_path, ["pkg"], {"pkg/long.py": 11, "pkg/listed.py": 12,
                                                    "pkg/ok.py": 40, "pkg/gone.py": 500},
                                limit=10)
    assert errors == [
        "pkg/gone.py is listed in ALLOWED_LONG but does not exist: remove it",
        "pkg/ok.py has 10 lines, within the limit: remove it from ALLOWED_LONG"]


SYNTHETIC = {
    "pkg/__init__.py": "",
    "pkg/sub/__init__.py": "",
    # a <-> b through an import inside a function
    "pkg/a.py": "from pkg import b\n",
    "pkg/b.py": """
        def late():
            from pkg.a import thing
            return thing
        """,
    # c -> d only under TYPE_CHECKING (exempt); its else branch counts
    "pkg/c.py": """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from pkg.d import D
        else:
            import pkg.sub.e
        """,
    "pkg/d.py": "import pkg.c\n",
    # relative imports and `from package import submodule`
    "pkg/sub/e.py": "from . import f\nfrom ..x import name\n",
    "pkg/sub/f.py": "from .. import x\n",
    "pkg/x.py": "import os\nname = 1\n",
}


def test_import_graph_resolves_every_import_form(tmp_path):
    _write(tmp_path, SYNTHETIC)
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.a"] == {"pkg.b"}  # `from pkg import b`: the submodule
    assert graph["pkg.b"] == {"pkg.a"}  # inside a function
    assert graph["pkg.c"] == {"pkg.sub.e"}  # not pkg.d (TYPE_CHECKING); else branch counts
    assert graph["pkg.d"] == {"pkg.c"}
    assert graph["pkg.sub.e"] == {"pkg.sub.f", "pkg.x"}  # `from . import f`, `from ..x`
    assert graph["pkg.sub.f"] == {"pkg.x"}
    assert graph["pkg.x"] == set()  # os is not ours


def test_cycle_check_finds_a_function_level_circle_and_only_shrinks(tmp_path):
    _write(tmp_path, SYNTHETIC)
    ab = frozenset({"pkg.a", "pkg.b"})
    assert strongly_connected(import_graph(tmp_path, ["pkg"])) == [ab]
    errors = cycle_errors(tmp_path, ["pkg"], {})
    assert errors == ["new import circle among {pkg.a, pkg.b}, e.g. pkg.a -> pkg.b -> pkg.a"]
    assert cycle_errors(tmp_path, ["pkg"], {"ab": ab}) == []
    # listed bigger than it is (a member left it): the entry must be updated
    errors = cycle_errors(tmp_path, ["pkg"], {"ab": ab | {"pkg.x"}})
    assert errors == ["import circle 'ab' changed: it is now {pkg.a, pkg.b}; update its "
                      "KNOWN_CYCLES entry to exactly that (it may only shrink)"]
    # the TYPE_CHECKING import made real: c <-> d is a new circle
    (tmp_path / "pkg/c.py").write_text("from pkg.d import D\n")
    assert frozenset({"pkg.c", "pkg.d"}) in strongly_connected(import_graph(tmp_path, ["pkg"]))
    # broken: the listed circle no longer exists
    (tmp_path / "pkg/b.py").write_text("x = 1\n")
    (tmp_path / "pkg/c.py").write_text("")
    assert cycle_errors(tmp_path, ["pkg"], {"ab": ab}) == [
        "import circle 'ab' no longer exists: remove it from KNOWN_CYCLES"]


@pytest.mark.parametrize("statement", ["import pkg.a", "from pkg import a",
                                       "from . import a", "from .a import thing",
                                       "import pkg.a as alias"])
def test_every_import_form_closes_a_circle(tmp_path, statement):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import pkg.b\n",
                      "pkg/b.py": f"def f():\n    {statement}\n"})
    assert strongly_connected(import_graph(tmp_path, ["pkg"])) == [
        frozenset({"pkg.a", "pkg.b"})]


#: a history comment: "issue 8", "issues 6 and 9", "(#12)" next to "issue"
_HISTORY = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)


def history_comments(root: Path, packages: Iterable[str]) -> list[str]:
    """``path:line: text`` of every line that cites an issue number (the code should say
    what it does and why, not which ticket brought it)."""
    found = []
    for path in sorted(module_files(root, packages).values()):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _HISTORY.search(line):
                found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    return found


def test_no_issue_numbers_in_the_code():
    assert history_comments(ROOT, PACKAGES) == []


def test_the_issue_number_check_finds_one(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""Clipping (issue 8)."""\n')
    (pkg / "ok.py").write_text("# the tissue 3 model is fine\nx = 1  # reissue 5\n")
    assert history_comments(tmp_path, ["pkg"]) == ['pkg/__init__.py:1: """Clipping (issue 8)."""']
