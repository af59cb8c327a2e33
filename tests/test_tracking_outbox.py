"""The tracking outbox without a server: ordering, back-off, spooling, fallback, replay.

A fake MLflow client fails like a dead tracking server (MLflow reports a refused
connection as an ``INTERNAL_ERROR`` MlflowException) while ``down`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    REQUEST_LIMIT_EXCEEDED,
    TEMPORARILY_UNAVAILABLE,
)

from fedpers.tracking import Tracker
from fedpers.tracking_fallback import read_fallback, replay
from fedpers.tracking_outbox import Outbox
from fedpers.tracking_records import (
    Record,
    http_limits,
    is_local_store,
    is_transient,
    send_to_mlflow,
)
from fedpers.tracking_store import TrackingError

RUN = "run0"
URI = "http://127.0.0.1:1"


def refused() -> MlflowException:
    return MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch "
                           "failed with exception HTTPConnectionPool: Connection refused")


def _chained(cause: BaseException) -> MlflowException:
    exc = MlflowException("(raised as a result of Query-invoked autoflush)")
    exc.__cause__ = cause
    return exc


def locked() -> MlflowException:
    """How a busy sqlite store fails (the sqlite message is in the chained cause)."""
    return _chained(RuntimeError("(sqlite3.OperationalError) database is locked"))


class FakeClient:
    """Records successful writes in order; every call fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.attempts = 0
        self.calls: list[tuple] = []
        self.refuse: set[str] = set()  # param keys answered with HTTP 400
        self.fail_on: set[int] = set()  # attempt numbers that fail as if the store were down
        self.error = refused  # what "down" raises

    def _check(self) -> None:
        self.attempts += 1
        if self.down or self.attempts in self.fail_on:
            raise self.error()

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._check()
        if any(p.key in self.refuse for p in params):
            raise MlflowException("param changed", error_code=INVALID_PARAMETER_VALUE)
        for m in metrics:
            self.calls.append(("metric", run_id, m.key, m.value, m.timestamp, m.step))
        for p in params:
            self.calls.append(("param", run_id, p.key, p.value))
        for t in tags:
            self.calls.append(("tag", run_id, t.key, t.value))

    def log_artifact(self, run_id, local_path, artifact_path=None):
        self._check()
        self.calls.append(("artifact", run_id, Path(local_path).name, artifact_path,
                           Path(local_path).read_text()))

    def set_terminated(self, run_id, status=None, end_time=None):
        self._check()
        self.calls.append(("status", run_id, status, end_time))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def steps_of(calls, key="acc"):
    return [c[5] for c in calls if c[0] == "metric" and c[2] == key]


def make_outbox(client: FakeClient, tmp_path: Path, clock: Clock, retry=5.0, max_retry=60.0):
    return Outbox(lambda r: send_to_mlflow(client, RUN, r), tmp_path / "fb" / RUN,
                  header={"run_id": RUN, "tracking_uri": URI}, retry_interval=retry,
                  max_retry_interval=max_retry, clock=clock, sleep=clock.sleep)


def test_transient_or_permanent():
    assert is_transient(refused())  # INTERNAL_ERROR = 500
    assert is_transient(MlflowException("x", error_code=TEMPORARILY_UNAVAILABLE))  # 503
    assert is_transient(MlflowException("x", error_code=REQUEST_LIMIT_EXCEEDED))  # 429
    assert not is_transient(MlflowException("x", error_code=INVALID_PARAMETER_VALUE))  # 400
    assert is_transient(requests.ConnectionError("reset"))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(ValueError("a bug"))
    assert not is_transient(FileNotFoundError("missing.pt"))
    # a sqlite file does not go away and come back: only a busy database is retried
    assert is_transient(locked(), local_store=True)
    assert not is_transient(_chained(RuntimeError("attempt to write a readonly database")),
                            local_store=True)
    assert not is_transient(refused(), local_store=True)
    assert is_local_store("sqlite:////tmp/mlflow.db") and is_local_store("/tmp/mlruns")
    assert not is_local_store("http://127.0.0.1:5000")


def test_healthy_store_gets_every_write_at_once(tmp_path):
    client, clock = FakeClient(), Clock()
    box = make_outbox(client, tmp_path, clock)
    box.submit(Record.batch(metrics=[("acc", 0.5, 1000, 1)]))
    box.submit(Record.terminate("FINISHED", end_time=2000))
    assert client.calls == [("metric", RUN, "acc", 0.5, 1000, 1),
                            ("status", RUN, "FINISHED", 2000)]
    assert box.pending == 0 and not (tmp_path / "fb").exists()


def test_outage_keeps_order_and_retries_once_per_interval(tmp_path):
    client, clock = FakeClient(), Clock()
    box = make_outbox(client, tmp_path, clock, retry=5.0)
    box.submit(Record.batch(metrics=[("acc", 0.1, 10, 1)]))
    client.down = True
    box.submit(Record.batch(metrics=[("acc", 0.2, 20, 2)]))  # fails: buffered
    assert client.attempts == 2 and box.pending == 1
    clock.t = 1.0
    art = tmp_path / "model.txt"
    art.write_text("weights v3")
    box.submit(Record.batch(metrics=[("acc", 0.3, 30, 3)]))
    box.submit(Record.artifact(art, "model"))
    art.unlink()  # callers hand over temporary files
    assert client.attempts == 2  # before the retry interval: queued, no request at all
    clock.t = 5.0
    box.submit(Record.batch(metrics=[("acc", 0.4, 40, 4)]))  # one retry: fails
    assert client.attempts == 3 and box.pending == 4
    client.down = False
    clock.t = 9.0  # next try at 5 + 2 * 5 = 15: still queued
    box.submit(Record.batch(metrics=[("acc", 0.5, 50, 5)]))
    assert client.attempts == 3 and box.pending == 5
    clock.t = 15.0
    box.submit(Record.batch(metrics=[("acc", 0.6, 60, 6)]))
    assert box.pending == 0 and box.sent_late == 6
    assert steps_of(client.calls) == [1, 2, 3, 4, 5, 6]
    # the timestamps are those of the original calls, the artifact its queued copy
    assert [c[4] for c in client.calls if c[0] == "metric"] == [10, 20, 30, 40, 50, 60]
    assert ("artifact", RUN, "model.txt", "model", "weights v3") in client.calls
    assert client.calls.index(("artifact", RUN, "model.txt", "model", "weights v3")) == 3
    assert not (tmp_path / "fb" / RUN).exists()  # the spool copy is gone once uploaded


def test_retry_interval_doubles_up_to_the_cap(tmp_path):
    client, clock = FakeClient(), Clock()
    box = make_outbox(client, tmp_path, clock, retry=5.0, max_retry=20.0)
    client.down = True
    tries = []
    for t in range(0, 80):  # one write a second for 80 s
        clock.t = float(t)
        before = client.attempts
        box.submit(Record.batch(metrics=[("acc", 0.0, t, t)]))
        if client.attempts > before:
            tries.append(t)
    # first failure at 0, then +5, +10, +20, +20, ...
    assert tries == [0, 5, 15, 35, 55, 75]
    assert box.pending == 80


def test_direct_permanent_error_is_raised_not_buffered(tmp_path):
    client, clock = FakeClient(), Clock()
    client.refuse = {"lr"}
    box = make_outbox(client, tmp_path, clock)
    with pytest.raises(MlflowException, match="param changed"):
        box.submit(Record.batch(params=[("lr", "0.1")]))
    assert box.pending == 0


def test_queued_permanent_error_is_kept_for_the_fallback(tmp_path, caplog):
    client, clock = FakeClient(), Clock()
    client.refuse = {"lr"}
    box = make_outbox(client, tmp_path, clock, retry=0.0)
    client.down = True
    box.submit(Record.batch(params=[("lr", "0.1")]))
    box.submit(Record.batch(metrics=[("acc", 0.9, 1, 1)]))
    client.down = False
    with caplog.at_level(logging.ERROR, logger="fedpers.tracking_outbox"):
        assert box.flush()  # the queue is through; the refused record is set aside
    assert steps_of(client.calls) == [1]
    assert box.pending == 1 and "refused a buffered batch" in caplog.text
    lines = read_fallback(box.write_fallback())
    assert [(ln["op"], ln["params"]) for ln in lines] == [("batch", [["lr", "0.1"]])]
    assert "param changed" in lines[0]["error"]


def tracker(client: FakeClient, tmp_path: Path, **kw) -> Tracker:
    kw = {"flush_timeout": 0.0, "retry_interval": 0.0, **kw}
    return Tracker(URI, RUN, client=client, fallback_dir=tmp_path / "fb", **kw)


def test_finish_while_down_writes_a_replayable_fallback(tmp_path, caplog):
    client = FakeClient()
    tr = tracker(client, tmp_path)
    tr.log_params({"lr": 0.1})
    tr.log_metrics({"acc": 0.1, "bytes": 10}, step=1)
    client.down = True
    tr.log_metrics({"acc": 0.2, "bytes": 20}, step=2)
    tr.log_metrics({"acc": 0.3, "bytes": 30}, step=3)
    tr.log_json({"a": 1}, "summary.json")  # its temporary file is gone after the call
    with caplog.at_level(logging.WARNING, logger="fedpers.tracking"):
        tr.finish("FINISHED")
    assert tr.run_status() == "FINISHED"  # what the store will say once it has it all
    path = tr.fallback_path
    assert path.parent == tmp_path / "fb" / RUN and path.name.startswith("records-")
    msg = caplog.text
    assert str(path) in msg and f"fedpers sync-tracking {tmp_path / 'fb' / RUN}" in msg
    assert "4 tracking records" in msg and "steps 2-3" in msg and "status FINISHED" in msg
    lines = read_fallback(path)
    assert [ln["op"] for ln in lines] == ["batch", "batch", "artifact", "terminate"]
    assert all(ln["run_id"] == RUN and ln["tracking_uri"] == URI for ln in lines)
    assert lines[-1]["status"] == "FINISHED"
    assert not Path(lines[2]["path"]).is_absolute()  # the folder can be moved

    sent_before = len(client.calls)
    client.down = False
    moved = tmp_path / "elsewhere"
    os.rename(tmp_path / "fb", moved)
    res = replay(moved, client_for=lambda uri: client)
    assert res.sent == {(URI, RUN): 4}
    late = client.calls[sent_before:]
    assert steps_of(late) == [2, 3]
    assert [c[3] for c in late if c[0] == "metric" and c[2] == "bytes"] == [20, 30]
    assert ("artifact", RUN, "summary.json", None, '{\n  "a": 1\n}') in late
    assert late[-1][:3] == ("status", RUN, "FINISHED")
    assert not (moved / RUN).exists()  # replayed: records and spooled copies removed


def test_replay_resumes_after_a_failure(tmp_path):
    client = FakeClient()
    tr = tracker(client, tmp_path)
    client.down = True
    for step in (1, 2, 3):
        tr.log_metrics({"acc": step / 10}, step=step)
    tr.finish("FAILED")
    path = tr.fallback_path
    assert len(read_fallback(path)) == 4

    client.down = False
    client.fail_on = {client.attempts + 2}  # the store goes away again at record 2
    with pytest.raises(TrackingError, match="stopped at record 2 of 4"):
        replay(path.parent, client_for=lambda uri: client)
    assert steps_of(client.calls) == [1]
    assert [ln["op"] for ln in read_fallback(path)] == ["batch", "batch", "terminate"]
    replay(path.parent.parent, client_for=lambda uri: client)
    assert steps_of(client.calls) == [1, 2, 3]
    assert client.calls[-1][:3] == ("status", RUN, "FAILED")
    assert not path.exists()


def test_the_journal_survives_a_crash_during_an_outage(tmp_path):
    """SIGKILL while records are queued: the journal on disk still has them, in order."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from mlflow.exceptions import MlflowException
        from fedpers.tracking import Tracker

        class Down:
            def __getattr__(self, name):
                def fail(*a, **k):
                    raise MlflowException("Connection refused")
                return fail

        tr = Tracker({URI!r}, {RUN!r}, client=Down(), fallback_dir={str(tmp_path / "fb")!r},
                     retry_interval=0.0)
        for step in (1, 2, 3):
            tr.log_metrics({{"acc": step / 10}}, step=step)
        art = Path({str(tmp_path / "ckpt.txt")!r})
        art.write_text("round 3")
        tr.log_file(art, "checkpoints")
        art.unlink()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr
    (journal,) = (tmp_path / "fb" / RUN).glob("records-*.jsonl")
    assert [ln["op"] for ln in read_fallback(journal)] == ["batch"] * 3 + ["artifact"]
    client = FakeClient()
    res = replay(tmp_path / "fb", client_for=lambda uri: client)
    assert res.sent == {(URI, RUN): 4}
    assert steps_of(client.calls) == [1, 2, 3]
    assert client.calls[-1] == ("artifact", RUN, "ckpt.txt", "checkpoints", "round 3")
    assert not (tmp_path / "fb" / RUN).exists()


def test_replay_sets_a_refused_record_aside_and_goes_on(tmp_path):
    client = FakeClient()
    tr = tracker(client, tmp_path)
    client.down = True
    tr.log_params({"lr": 0.1})
    tr.log_metrics({"acc": 0.5}, step=1)
    tr.finish()
    client.down = False
    client.refuse = {"lr"}  # e.g. the run got another lr meanwhile
    res = replay(tmp_path / "fb", client_for=lambda uri: client)
    assert res.refused == 1 and res.sent == {(URI, RUN): 2}
    assert steps_of(client.calls) == [1] and client.calls[-1][2] == "FINISHED"
    (line,) = read_fallback(tmp_path / "fb" / RUN / "refused.jsonl")
    assert line["params"] == [["lr", "0.1"]] and "param changed" in line["error"]
    assert not list((tmp_path / "fb" / RUN).glob("records-*.jsonl"))


def test_store_back_before_finish_leaves_no_fallback(tmp_path):
    client = FakeClient()
    tr = tracker(client, tmp_path)
    client.down = True
    tr.log_metrics({"acc": 0.2}, step=1)
    tr.log_file(__file__, "src")
    client.down = False
    tr.finish()
    assert steps_of(client.calls) == [1]
    assert [c[0] for c in client.calls] == ["metric", "artifact", "status"]
    assert tr.fallback_path is None and not (tmp_path / "fb").exists()


def test_finish_waits_for_the_store_within_the_flush_timeout(tmp_path):
    client = FakeClient()
    tr = tracker(client, tmp_path, flush_timeout=30.0, retry_interval=0.05)
    client.down = True
    tr.log_metrics({"acc": 0.2}, step=1)
    threading.Timer(0.3, lambda: setattr(client, "down", False)).start()
    tr.finish("FINISHED")
    assert steps_of(client.calls) == [1] and client.calls[-1][2] == "FINISHED"
    assert tr.fallback_path is None


def test_bad_env_setting_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPERS_TRACKING_FLUSH_TIMEOUT", "soon")
    with pytest.raises(TrackingError, match="FEDPERS_TRACKING_FLUSH_TIMEOUT='soon'"):
        Tracker(URI, RUN, client=FakeClient(), fallback_dir=tmp_path)


def test_http_limits_nest_and_restore(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with http_limits(0, 5):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        with http_limits(0, 10):
            assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_unreachable_store_at_start_still_fails_fast():
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match="cannot reach the MLflow store"):
        Tracker.start(f"http://127.0.0.1:{port}", "exp")
    assert time.monotonic() - t0 < 5.0


def test_fallback_line_format_is_plain_json(tmp_path):
    client = FakeClient()
    tr = tracker(client, tmp_path)
    client.down = True
    tr.set_tags({"k": "v"})
    tr.finish("KILLED")
    first = json.loads(tr.fallback_path.read_text().splitlines()[0])
    assert first == {"v": 1, "run_id": RUN, "tracking_uri": URI, "op": "batch",
                     "metrics": [], "params": [], "tags": [["k", "v"]]}


@pytest.mark.slow  # a real sqlite store: its schema migrations take seconds
def test_sync_tracking_command_replays_into_a_real_store(tmp_path, tracking_uri, capsys):
    """The fallback of a run whose store died, sent by ``fedpers sync-tracking``."""
    from fedpers.cli import main

    real = Tracker.start(tracking_uri, "sync")
    client = FakeClient()  # the store as the run saw it: busy after round 1
    client.error = locked
    tr = Tracker(tracking_uri, real.run_id, client=client, fallback_dir=tmp_path / "fb",
                 flush_timeout=0.0, retry_interval=0.0)
    tr.log_metrics({"eval/global_accuracy": 0.5}, step=1)
    client.down = True
    tr.log_metrics({"eval/global_accuracy": 0.75}, step=2)
    tr.log_file(__file__, "src")
    tr.finish("FINISHED")
    assert tr.fallback_path is not None
    stamp = read_fallback(tr.fallback_path)[0]["metrics"][0][2]

    assert main(["sync-tracking", str(tmp_path / "fb"), "--tracking-uri", tracking_uri]) == 0
    assert f"sent 3 records of run {real.run_id}" in capsys.readouterr().out
    store = real.client
    hist = store.get_metric_history(real.run_id, "eval/global_accuracy")
    assert [(m.step, m.value, m.timestamp) for m in hist] == [(2, 0.75, stamp)]
    run = store.get_run(real.run_id)
    assert run.info.status == "FINISHED"
    assert [a.path for a in store.list_artifacts(real.run_id, "src")] == [
        f"src/{Path(__file__).name}"]
    assert not (tmp_path / "fb").joinpath(real.run_id).exists()
    assert main(["sync-tracking", str(tmp_path / "fb")]) == 0  # nothing left: a no-op


@pytest.mark.slow  # a real sqlite store
def test_a_continued_run_sends_the_leftovers_first(tmp_path, tracking_uri, monkeypatch):
    """``Tracker.attach`` (resume) first sends what an earlier process left unsent."""
    monkeypatch.setenv("FEDPERS_TRACKING_FALLBACK_DIR", str(tmp_path / "fb"))
    real = Tracker.start(tracking_uri, "resume")
    real.log_metrics({"acc": 0.1}, step=1)
    client = FakeClient()
    client.error = locked
    client.down = True  # the store was busy; the process then failed
    gone = Tracker(tracking_uri, real.run_id, client=client, flush_timeout=0.0,
                   retry_interval=0.0)
    gone.log_metrics({"acc": 0.2}, step=2)
    gone.finish("FAILED")
    assert gone.fallback_path is not None

    again = Tracker.attach(tracking_uri, real.run_id)
    hist = again.client.get_metric_history(real.run_id, "acc")
    assert sorted((m.step, m.value) for m in hist) == [(1, 0.1), (2, 0.2)]
    # the old FAILED went first, then the continued run is RUNNING again
    assert again.client.get_run(real.run_id).info.status == "RUNNING"
    assert not (tmp_path / "fb" / real.run_id).exists()
    again.finish()
    assert again.client.get_run(real.run_id).info.status == "FINISHED"
