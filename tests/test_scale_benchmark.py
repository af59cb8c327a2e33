"""benchmarks/scale/run.py: the memory sampler sees a process tree; --quick runs end to end.

Behaviour only: no assertion on speed or memory size.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from conftest import ROOT, load_script

SCRIPT = ROOT / "benchmarks" / "scale" / "run.py"


def test_tree_memory_counts_children():
    run = load_script(SCRIPT, "scale_run")
    child = subprocess.Popen([sys.executable, "-c",
                              "b = bytearray(200 * 2**20); import time; time.sleep(30)"])
    try:
        deadline = time.time() + 20
        while time.time() < deadline and child.pid not in run.process_tree(os.getpid()):
            time.sleep(0.1)
        assert child.pid in run.process_tree(os.getpid())
        deadline = time.time() + 20  # until the child has touched its 200 MiB
        while time.time() < deadline and run.tree_rss(child.pid) < 200 * 2**20:
            time.sleep(0.2)
        child_rss = run.tree_rss(child.pid)
        assert child_rss >= 200 * 2**20
        # this process's tree counts the child on top of this process itself
        own = 1024 * run._status_kib(os.getpid(), "VmRSS")
        assert own > 10 * 2**20
        assert run.tree_rss(os.getpid()) >= child_rss + own // 2
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
def test_quick_run_prints_a_row_per_size():
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True,
                         text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
                      res.stdout, re.M)
    assert [(r[0], r[1], r[2]) for r in rows] == [("20", "1", "1"), ("50", "1", "1")]
    for row in rows:
        startup, per_round, peak = (float(x) for x in row[3:])
        assert startup > per_round > 0 and peak > 0.1  # GiB: torch alone is more
    assert "virtual clients: 1 SuperNode(s) serve 50 clients" in res.stdout


def test_size_config_uses_one_node_per_round_client_unless_set(tmp_path):
    import argparse

    run = load_script(SCRIPT, "scale_run")
    args = argparse.Namespace(task="digits", fraction=0.01, rounds=6, samples=50,
                              one_node_per_client=False, set=[])
    assert run.size_config(10_000, args, str(tmp_path))["virtual-nodes"] == 100
    args.set = ["virtual-nodes=2", "clients-per-call=50"]
    raw = run.size_config(10_000, args, str(tmp_path))
    assert (raw["virtual-nodes"], raw["clients-per-call"]) == (2, 50)
    args.one_node_per_client = True
    assert run.size_config(10_000, args, str(tmp_path))["virtual-nodes"] == 0
