"""benchmarks/selection/participation.py: the figures it prints from participation.csv."""

from __future__ import annotations

import pytest
from conftest import ROOT, load_script

SCRIPT = ROOT / "benchmarks" / "selection" / "participation.py"


def _load():
    return load_script(SCRIPT, "selection_participation")


def _row(pid: int, selected: int, n: int, sps: float, expected: float) -> dict[str, str]:
    return {"partition-id": str(pid), "times-selected": str(selected), "num-examples": str(n),
            "compute-sps": str(sps), "expected-s": str(expected)}


def test_analyse_on_hand_made_rows():
    rows = [_row(0, 6, 100, 10.0, 12.0),  # slower than the 10 s deadline
            _row(1, 2, 50, 20.0, 3.0),
            _row(2, 1, 40, 30.0, 2.0),
            _row(3, 1, 30, 40.0, 1.0)]
    out = _load().analyse(rows, deadline=10.0)
    assert out["selections"] == 10
    assert out["jain"] == pytest.approx(100 / (4 * (36 + 4 + 1 + 1)))
    assert out["top_quarter_share"] == pytest.approx(0.6)  # the one most-picked client
    assert (out["never"], out["once"], out["max"]) == (0, 2, 6)
    assert out["slower_than_deadline"] == 1
    assert out["slow_share_of_clients"] == pytest.approx(0.25)
    assert out["slow_share_of_selections"] == pytest.approx(0.6)
    assert out["spearman_num_examples"] > 0.9  # more data, more picks here
    assert out["spearman_compute_sps"] < -0.9


def test_no_deadline_leaves_out_the_deadline_figures():
    rows = [_row(0, 1, 10, 1.0, 10.0), _row(1, 3, 20, 2.0, 10.0)]
    out = _load().analyse(rows, deadline=0.0)
    assert "slower_than_deadline" not in out
    assert out["jain"] == pytest.approx(16 / (2 * 10))
