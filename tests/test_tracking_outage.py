"""A real ``mlflow server`` dies mid-run and comes back: training goes on, no round is lost.

The run goes through Flower's Simulation Engine with a tracking URI on loopback.
A client mod holds round 3 until the server has been killed (SIGKILL, after round
2 is in the store) and round 5 until it has been restarted on the same database,
so rounds 3 and 4 are logged while the server is down whatever the machine's
speed: they are buffered and sent when round 5 is logged. Artifacts go through
the server (``--artifacts-destination``), as in a shared deployment.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import metric_history
from flwr.app import Context, Message, MessageType
from mlflow.tracking import MlflowClient

from fedpers.client_app import build_client_app
from fedpers.config import parse_run_config
from fedpers.simulation import run_simulation
from fedpers.tracking_fallback import read_fallback
from fedpers.tracking_records import http_limits

pytestmark = pytest.mark.slow

ROUNDS = 8
HOLD_UNTIL_KILLED, HOLD_UNTIL_BACK = 3, 5
# Generous limits: on a loaded machine starting `mlflow server` alone can take minutes.
# They only bound a broken test; a working one never waits for them.
STEP_TIMEOUT = 600.0
GATE_MAX_WAIT = 2 * STEP_TIMEOUT  # a client never waits longer, so a broken test cannot hang
MLFLOW = Path(sys.executable).parent / "mlflow"


def gate_mod(folder: Path, rounds: tuple[int, ...], max_wait: float = GATE_MAX_WAIT):
    """Hold the train messages of ``rounds`` until ``folder/go-<round>`` exists.

    Each held client first writes ``folder/reached-<round>``.
    """

    def mod(msg: Message, context: Context, call_next):
        if msg.metadata.message_type == MessageType.TRAIN:
            rnd = next((int(c["server-round"]) for c in msg.content.config_records.values()
                        if "server-round" in c), None)
            if rnd in rounds:
                (folder / f"reached-{rnd}").touch()
                deadline = time.monotonic() + max_wait
                while not (folder / f"go-{rnd}").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
        return call_next(msg, context)

    return mod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on loopback, in its own process group (it starts uvicorn)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = STEP_TIMEOUT) -> None:
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "w")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.proc = subprocess.Popen(
            ["nice", "-n", "19", str(MLFLOW), "server",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"mlflow server not up after {timeout:.0f} s: {self.log_tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the CLI and its uvicorn worker
            self.proc.wait(timeout=30)
        self.proc = None

    def log_tail(self) -> str:
        return (self.root / f"server-{self.starts}.log").read_text()[-2000:]


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path, free_port())
    yield srv
    srv.kill()


def wait_for(path: Path, run_done: threading.Event, timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if run_done.is_set():
            raise RuntimeError(f"the run ended before {path.name}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path.name} after {timeout:.0f} s")
        time.sleep(0.05)


def test_server_killed_and_restarted_mid_run_loses_no_round(server, tmp_path, monkeypatch,
                                                            caplog):
    gates = tmp_path / "gates"
    gates.mkdir()
    monkeypatch.setenv("FEDPERS_TRACKING_FALLBACK_DIR", str(tmp_path / "fallback"))
    monkeypatch.setenv("FEDPERS_TRACKING_RETRY_INTERVAL", "0.2")
    monkeypatch.setenv("FEDPERS_TRACKING_FLUSH_TIMEOUT", "60")
    t_start = time.monotonic()
    server.start()
    print(f"mlflow server up in {time.monotonic() - t_start:.1f} s")
    cfg = parse_run_config({"task": "digits", "num-clients": 2, "num-server-rounds": ROUNDS,
                            "local-epochs": 1, "batch-size": 32, "lr": 0.1, "eval-every": 1,
                            "tracking-uri": server.uri, "experiment": "outage"})
    app = build_client_app(mods=[gate_mod(gates, (HOLD_UNTIL_KILLED, HOLD_UNTIL_BACK))])

    run_done = threading.Event()
    seen: dict[str, object] = {}

    def operate() -> None:
        """Kill the server once round 2 is stored; restart it once round 4 is logged."""
        try:
            wait_for(gates / f"reached-{HOLD_UNTIL_KILLED}", run_done)
            with http_limits(0, 5):
                client = MlflowClient(server.uri)
                (run,) = client.search_runs(
                    [client.get_experiment_by_name("outage").experiment_id])
                seen["before_kill"] = [m.step for m in
                                       client.get_metric_history(run.info.run_id,
                                                                 "comm/bytes_up")]
            seen["killed_s"] = time.monotonic() - t0
            server.kill()
            (gates / f"go-{HOLD_UNTIL_KILLED}").touch()
            # round 4's metrics are logged (and buffered) before round 5 is sent
            wait_for(gates / f"reached-{HOLD_UNTIL_BACK}", run_done)
            # meanwhile the queued rounds are journalled on disk (they survive a crash)
            seen["journal"] = [line for f in (tmp_path / "fallback").glob("*/records-*.jsonl")
                               for line in read_fallback(f)]
            seen["restart_ms"] = int(time.time() * 1000)
            server.start()
            seen["back_s"] = time.monotonic() - t0
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            seen["error"] = exc
        finally:
            for rnd in (HOLD_UNTIL_KILLED, HOLD_UNTIL_BACK):
                (gates / f"go-{rnd}").touch()

    operator = threading.Thread(target=operate, daemon=True)
    t0 = time.monotonic()
    operator.start()
    with caplog.at_level(logging.INFO, logger="fedpers.tracking_outbox"):
        try:
            run_id = run_simulation(cfg, client_app=app)
        finally:
            run_done.set()
            operator.join(timeout=STEP_TIMEOUT)
    took = time.monotonic() - t0
    if "error" in seen:
        raise seen["error"]  # type: ignore[misc]
    assert seen["before_kill"] == [1, 2]
    journal = seen["journal"]
    assert {line["run_id"] for line in journal} == {run_id}
    assert sorted({m[3] for line in journal for m in line["metrics"]}) == [3, 4]

    hist = metric_history(server.uri, run_id)
    for key in ("eval/global_accuracy", "comm/bytes_up", "clients/trained"):
        assert [s for s, _ in hist[key]] == list(range(1, ROUNDS + 1)), key
    assert all(v == 2 for _, v in hist["clients/trained"])
    assert dict(hist["eval/global_accuracy"])[ROUNDS] > 0.5  # training went on
    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["num-server-rounds"] == str(ROUNDS)
    # rounds 3 and 4 keep the time they were logged at, before the server was back
    stamps = {m.step: m.timestamp for m in client.get_metric_history(run_id, "comm/bytes_up")}
    assert stamps[3] <= stamps[4] < seen["restart_ms"] <= stamps[5]
    assert {"config.json", "model"} <= {a.path for a in client.list_artifacts(run_id)}
    assert "is unreachable" in caplog.text and "is back after" in caplog.text
    assert "buffered tracking records written" in caplog.text
    assert not (tmp_path / "fallback").exists()  # nothing was left for a replay
    print(f"run with a server outage: {took:.1f} s (server killed at {seen['killed_s']:.1f} s, "
          f"back at {seen['back_s']:.1f} s)")
