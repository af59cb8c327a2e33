"""benchmarks/overhead/run.py: the floor does fedpers' local work, the script reports ratios.

Behaviour only: no assertion on speed.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, load_script

from fedpers.config import parse_run_config
from fedpers.data import TASKS, DataSpec, load_federated
from fedpers.training import resolve_device, train_local

SCRIPT = ROOT / "benchmarks" / "overhead" / "run.py"


def _load_script():
    return load_script(SCRIPT, "overhead_run")


def test_floor_update_equals_train_local():
    """The raw floor trains exactly as fedpers' clients do (same batches, seeds, steps)."""
    run = _load_script()
    cfg = parse_run_config({"task": "digits", "num-clients": 3, "partition": "iid",
                            "max-samples-per-client": 50, "local-epochs": 2, "lr": 0.1,
                            "momentum": 0.9, "batch-size": 16})
    fed = load_federated(DataSpec.from_config(cfg))
    c = fed.clients[1]
    torch.manual_seed(0)
    model = TASKS["digits"].build_model(fed.input_shape, fed.num_classes)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    update = run._local_update(model, start, c.x_train, c.y_train, cfg, seed=7)

    ref = TASKS["digits"].build_model(fed.input_shape, fed.num_classes)
    ref.load_state_dict(start)
    res = train_local(ref, c.x_train, c.y_train, kind="classification", epochs=2,
                      batch_size=16, lr=0.1, momentum=0.9, seed=7,
                      device=resolve_device("cpu"))
    assert res.steps == 2 * math.ceil(len(c.x_train) / 16)
    for k, v in ref.state_dict().items():
        np.testing.assert_allclose((start[k] + update[k]).numpy(), v.numpy(), rtol=0, atol=1e-6)
    assert any(float(u.abs().max()) > 0 for u in update.values())  # it did train


def test_floor_round_is_the_weighted_mean_of_updates():
    """One floor round moves the model by the example-weighted mean of the client updates."""
    run = _load_script()
    cfg = parse_run_config({"task": "digits", "num-clients": 2, "partition": "iid",
                            "max-samples-per-client": 30, "num-server-rounds": 1})
    floor = run._Floor(cfg)
    g = {k: v.detach().clone() for k, v in floor.model.state_dict().items()}
    total, n = floor.weighted_sum(g, 1, [0, 1])
    assert n == sum(c.num_train for c in floor.fed.clients)
    u0, _ = floor.weighted_sum(g, 1, [0])
    u1, _ = floor.weighted_sum(g, 1, [1])
    for k in g:
        np.testing.assert_allclose(total[k].numpy(), (u0[k] + u1[k]).numpy(), atol=1e-6)


@pytest.mark.slow
def test_quick_run_prints_both_timings_and_a_ratio_per_size():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--task", "digits"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "--cpus" in out and "threads in this process" in out
    rows = re.findall(r"^\| (\d+) \| ([^\n]+) \|$", out, flags=re.M)
    assert [int(n) for n, _ in rows] == [2, 3]  # the --quick sizes, in order
    for n, cells in rows:
        values = [float(v) for v in cells.split(" | ")]
        # (a) threads, (a) procs, (b) fedpers, the two ratios (b)/(a), then the
        # driver's CPU seconds per round and per client
        assert len(values) == 7
        assert all(math.isfinite(v) and v > 0 for v in values)
        np.testing.assert_allclose(values[6], 1e3 * values[5] / int(n), rtol=0.01, atol=0.06)
        # times have 4 significant digits, ratios 2 decimals
        np.testing.assert_allclose(values[3], values[2] / values[0], rtol=0.01, atol=0.006)
        np.testing.assert_allclose(values[4], values[2] / values[1], rtol=0.01, atol=0.006)


def test_cpu_clock_reads_cpu_seconds_between_samples():
    clock = _load_script()._CpuClock()
    clock.stop()
    clock.samples = [(10.0, 1.0), (11.0, 1.5), (12.0, 3.5)]
    assert clock.at(9.0) == 1.0 and clock.at(13.0) == 3.5  # outside: the nearest sample
    assert clock.at(10.5) == pytest.approx(1.25)
    assert clock.at(11.0) == pytest.approx(1.5)
    assert clock.at(11.75) == pytest.approx(3.0)


@pytest.mark.slow
def test_repeated_packed_run_summarises_each_size_and_the_timeline_runs():
    """--repeat with packed calls (--pack: clients-per-call) in (b); then timeline.py, which
    stamps every call and client of a packed run."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--task", "digits",
                           "--sizes", "3", "--floors", "procs", "--repeat", "2",
                           "--pack", "--cpus", "2"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(b) packed: virtual-nodes = --cpus" in proc.stdout
    # 2 SuperNodes serve the 3 clients: one message each per round (2 + 1 clients)
    assert "virtual clients: 2 SuperNode(s) serve 3 clients" in proc.stderr + proc.stdout
    rows = re.findall(r"^\| 3 \| (\d) \| ([^\n]+) \|$", proc.stdout, flags=re.M)
    assert [int(r) for r, _ in rows] == [1, 2]
    ratios = [float(cells.split(" | ")[2]) for _, cells in rows]
    summary = re.search(r"^3 clients per round, \(b\)/\(a\) procs over 2 runs: mean "
                        r"([\d.]+), min ([\d.]+), max ([\d.]+)$", proc.stdout, flags=re.M)
    assert summary, proc.stdout[-2000:]
    mean, lo, hi = map(float, summary.groups())
    assert lo == pytest.approx(min(ratios), abs=0.011)
    assert hi == pytest.approx(max(ratios), abs=0.011)
    assert mean == pytest.approx(sum(ratios) / 2, abs=0.011)

    timeline = ROOT / "benchmarks" / "overhead" / "timeline.py"
    proc = subprocess.run([sys.executable, str(timeline), "--task", "digits", "--clients", "3",
                           "--samples", "40", "--rounds", "4", "--warmup", "1",
                           "--set", "virtual-nodes=1", "clients-per-call=3"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = re.findall(r"^\| (\d) \| ([^\n]+) \|$", proc.stdout, flags=re.M)
    assert [int(r) for r, _ in lines] == [2, 3]  # rounds warmup+1 .. rounds-1
    for _, cells in lines:
        total, before, to_start, span, busy, to_replies, after = cells.split(" | ")
        parts = [float(total), float(before), float(to_start), float(span),
                 float(to_replies), float(after)]
        assert all(v >= 0 for v in parts)
        # the parts of a round add up to it (each rounded to 1 ms)
        assert sum(parts[1:]) == pytest.approx(parts[0], abs=0.006)
        assert len(busy.split(", ")) == 1  # one worker served the packed call


@pytest.mark.slow
def test_sweep_cost_prints_both_fixed_costs_and_their_ratio():
    """benchmarks/overhead/sweep_cost.py: two tiny runs on their own, then as a sweep."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead" / "sweep_cost.py"),
                          "--runs", "2", "--rounds", "2", "--clients", "2", "--cpus", "2"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^\| \((a|b)\)[^|]*\| ([\d.]+) \| (-?[\d.]+) \|$", out.stdout, re.M)
    assert [r[0] for r in rows] == ["a", "b"], out.stdout
    assert all(float(wall) > 0 for _, wall, _ in rows)
    assert re.search(r"^fixed cost per run \(b\)/\(a\): -?[\d.]+$", out.stdout, re.M)


@pytest.mark.slow
def test_whole_process_comparison_prints_both_sides_and_the_ratio():
    """benchmarks/overhead/whole.py --quick: a plain loop and fedpers run, tiny."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead" / "whole.py"),
                          "--quick", "--settings", "small", "--repeat", "1"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    num = r" ([\d.]+) \|"
    row = re.search(r"^\| small \|" + num * 6 + "$", out.stdout, re.M)
    assert row, out.stdout
    plain, fed, ratio, first, acc_a, acc_b = map(float, row.groups())
    assert ratio == pytest.approx(fed / plain, rel=0.1)  # the seconds are printed rounded
    assert 0 < first < fed  # round 1 ended before the process did
    assert 0.0 <= acc_a <= 1.0 and 0.0 <= acc_b <= 1.0


def test_the_plain_loop_learns_and_evaluates_like_a_federated_run():
    """whole.py's plain loop on a tiny digits federation: better than chance after 3
    rounds, reproducible from the seed."""
    whole = load_script(ROOT / "benchmarks" / "overhead" / "whole.py", "overhead_whole")
    raw = {"task": "digits", "num-clients": 4, "num-server-rounds": 3, "partition": "iid",
           "lr": 0.1, "local-epochs": 2}
    acc = whole.plain_loop(raw)
    assert acc > 0.3  # chance is 0.1
    assert whole.plain_loop(raw) == acc
