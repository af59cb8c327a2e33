"""What a user sees in MLflow's UI after a benchmark, checked in a real browser.

A quick sweep (``fedpers bench benchmarks/quickstart --quick``) and its report go to a
new sqlite store; ``mlflow server`` serves it on a free loopback port, and headless
Chromium renders the pages (``--dump-dom`` after the page's scripts ran). Checked: the
experiment opens on its runs (not MLflow's GenAI overview), the parent run shows its
child runs, the summary table and verdicts and the headline metrics, and a chart of
``eval/global_accuracy`` is drawn for the child runs.

Skipped where Chromium is not installed (``.ci/run`` installs Debian's ``chromium``).
With ``FEDPERS_UI_SCREENSHOTS=DIR`` set, the pages are also saved as PNGs in DIR
(``docs/img/`` holds the ones ``docs/tracking.md`` shows).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

from fedpers.tracking import metric_chart_url, ui_url

pytestmark = pytest.mark.slow

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                               "google-chrome")) if p), None)
# the flags known to work here (no network: background services off)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1600,1000")
BUDGET_MS = 30_000  # virtual time for the page's scripts and requests
SERVER_START_S = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fedpers(*args: str, cwd: Path) -> str:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run([sys.executable, "-m", "fedpers.cli", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, f"fedpers {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _api(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A quick sweep with its report, served by ``mlflow server``: (base URL,
    experiment id, parent run id, {child run name: run id}, work folder)."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; "
                    ".ci/run installs it)")
    work = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    out = _fedpers("bench", str(ROOT / "benchmarks" / "quickstart"), "--quick",
                   "--tracking-uri", uri, "--no-progress", cwd=work)
    parent = re.search(r"benchmark parent run: (\w+)", out).group(1)
    _fedpers("report", parent, "--tracking-uri", uri, "--out", str(work / "report"), cwd=work)
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(work / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start: "
                                f"{(work / 'server.log').read_text()[-2000:]}")
                time.sleep(1)
        exp_ids = [e["experiment_id"] for e in
                   _api(base, "experiments/search", {"max_results": 100})["experiments"]]
        runs = _api(base, "runs/search", {"experiment_ids": exp_ids,
                                          "max_results": 100})["runs"]
        exp_id = next(r["info"]["experiment_id"] for r in runs
                      if r["info"]["run_id"] == parent)
        children = {r["info"]["run_name"]: r["info"]["run_id"] for r in runs
                    if r["info"]["run_id"] != parent}
        yield base, exp_id, parent, children, work
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _render(url: str, work: Path, name: str) -> tuple[str, str]:
    """The page after its scripts ran: (DOM, its visible text). Saves a screenshot as
    ``$FEDPERS_UI_SCREENSHOTS/<name>.png`` when that is set."""
    profile = work / f"chromium-{name}"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
           f"--virtual-time-budget={BUDGET_MS}"]
    dom = subprocess.run([*cmd, "--dump-dom", url], capture_output=True, text=True,
                         timeout=180).stdout
    shots = os.environ.get("FEDPERS_UI_SCREENSHOTS")
    if shots:
        shutil.rmtree(profile, ignore_errors=True)
        subprocess.run([*cmd, f"--screenshot={Path(shots).resolve() / f'{name}.png'}", url],
                       capture_output=True, timeout=180)
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))
    return dom, text


def test_the_experiment_opens_on_its_runs(served):
    base, exp_id, parent, children, work = served
    _, text = _render(ui_url(base, exp_id), work, "mlflow-runs")
    assert "quickstart (quick)" in text  # the parent run's row
    assert " Runs " in text and "matching runs" in text
    # not the GenAI overview (traces, latency, token usage)
    assert "Token Usage" not in text and "No data available" not in text


def test_the_parent_shows_its_children_and_summary(served):
    base, exp_id, parent, children, work = served
    assert sorted(children) == ["dirichlet-0.1/seed=0", "dirichlet-0.3/seed=0", "iid/seed=0"]
    _, text = _render(ui_url(base, exp_id, parent), work, "mlflow-parent")
    listed = text[text.index("Child runs "):][:300]
    assert all(name in listed for name in children), listed
    # the description: the report's summary table and the paired verdicts
    assert "Description Benchmark quickstart :" in text
    assert re.search(r"variant seeds global acc .*? iid 1 0\.\d{4} ", text)
    assert "dirichlet-0.1 vs iid, global accuracy: Δ" in text
    # the headline metrics, per variant
    assert re.search(r"iid/global_accuracy_mean 0\.\d+", text)
    assert re.search(r"dirichlet-0\.3/client_accuracy_p10 0\.\d+", text)


def test_a_chart_of_global_accuracy_is_drawn(served):
    base, exp_id, parent, children, work = served
    url = metric_chart_url(base, exp_id, sorted(children.values()), "eval/global_accuracy")
    dom, text = _render(url, work, "mlflow-global-accuracy")
    assert 'class="main-svg"' in dom  # plotly drew the figure
    assert dom.count('class="js-line"') >= len(children)  # one line per run at least
    for name in children:
        assert f"{name} (eval/global_accuracy)" in text  # its legend entry
