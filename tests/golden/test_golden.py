"""Golden results: every golden run (``runs.py``) replayed gives its recorded numbers.

The slow test replays each run in-process on the Simulation Engine and compares every
final metric, bit for bit, with ``golden.json`` (``record.py`` writes it); the fast
tests check that the runs cover every registered component and that the comparison
itself catches a changed, new or missing number.

A change that is meant to change results (a bug fix, a new default) re-records the
file: ``.venv/bin/python -m tests.golden.record`` (say why in the commit). The
environment variable ``FEDPERS_GOLDEN_FILE`` points the replay at another file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.golden.replay import (
    BYTE_KEYS,
    GOLDEN,
    PINNED,
    differences,
    load_golden,
    run,
    versions,
)
from tests.golden.runs import NONDETERMINISTIC, RESUMED, RUNS, registry_names, uncovered


def _golden_path() -> Path:
    return Path(os.environ.get("FEDPERS_GOLDEN_FILE", GOLDEN))


# ------------------------------------------------------------------ fast checks
def test_every_registered_component_has_a_golden_run():
    missing = uncovered()
    assert not missing, (f"no golden run uses {missing}: add one to tests/golden/runs.py "
                         f"and re-record (python -m tests.golden.record)")


def test_the_coverage_check_sees_a_component_without_a_run():
    without_dp = {k: v for k, v in RUNS.items() if k != "dp-q2-npz"}
    assert uncovered(without_dp) == {"dp": {"client-clipping"}, "task": {"npz"},
                                     "codec": {"q2"}}
    assert {"strategy", "codec", "selection", "aggregation", "attack", "personalization",
            "dp", "task"} <= set(registry_names())


def test_the_golden_file_holds_every_run_with_its_bytes():
    golden = load_golden(GOLDEN)
    assert set(golden["versions"]) >= set(PINNED)
    assert list(golden["runs"]) == list(RUNS), "re-record: python -m tests.golden.record"
    for name, rec in golden["runs"].items():
        assert set(rec["bytes"]) == set(BYTE_KEYS), name
        for key in BYTE_KEYS:
            assert rec["bytes"][key] == rec["metrics"][key], (name, key)
            assert float(rec["bytes"][key]) > 0, (name, key)
        assert "eval/global_loss" in rec["metrics"], name
    assert set(RESUMED) <= set(RUNS)
    assert all(RUNS[name].get("checkpoint-every", 0) >= 1 for name in RESUMED)


def test_differences_name_the_key_the_golden_and_the_new_value():
    golden = {"a": repr(0.1 + 0.2), "b": "1.0", "gone": "2.0", "nan": "nan"}
    assert differences(golden, {"a": 0.1 + 0.2, "b": 1.0, "gone": 2.0,
                                "nan": float("nan")}) == []
    lines = differences(golden, {"a": 0.3, "b": -1.0, "new": 5.0, "nan": float("nan")})
    assert lines == ["a: golden 0.30000000000000004, now 0.3 (diff -5.55e-17)",
                     "b: golden 1.0, now -1.0 (diff -2)",
                     "gone: golden 2.0, now <absent>",
                     "new: golden <absent>, now 5.0"]
    assert differences({"x": "0.0"}, {"x": -0.0}) == ["x: golden 0.0, now -0.0 (diff -0)"]
    assert differences({"t": "1.0"}, {"t": 2.0}, ignore=frozenset({"t"})) == []


# ------------------------------------------------------------------ the replay
@pytest.fixture(scope="module")
def golden() -> dict:
    data = load_golden(_golden_path())
    now = versions()
    changed = {k: (data["versions"].get(k), now[k]) for k in PINNED
               if data["versions"].get(k) != now[k]}
    if changed:
        pytest.skip("golden numbers were recorded with other versions ("
                    + ", ".join(f"{k} {a} there, {b} here" for k, (a, b) in changed.items())
                    + "); re-record them: python -m tests.golden.record")
    return data


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("golden")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_a_golden_run_replays_to_its_recorded_numbers(name, golden, workdir):
    if name not in golden["runs"]:
        pytest.fail(f"{_golden_path()} has no entry for run {name!r}; re-record it: "
                    f"python -m tests.golden.record --only {name}")
    now = run(name, workdir)
    diff = differences(golden["runs"][name]["metrics"], now, NONDETERMINISTIC)
    how = f" (interrupted after round {RESUMED[name]}, resumed)" if name in RESUMED else ""
    if diff:
        pytest.fail(f"golden run {name!r}{how}: {len(diff)} number(s) differ from "
                    f"{_golden_path()}:\n  " + "\n  ".join(diff), pytrace=False)
