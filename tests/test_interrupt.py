"""Clean interruption, fast parts: the stop request (fedpers.interrupt), the watchdog
of Ray's processes (fedpers.reaper) and the rule for rounds in which no client
trained (fedpers.server_app). The real runs stopped by signals are in
``test_interrupt_e2e.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Message, MessageType, MetricRecord, RecordDict

from fedpers import interrupt
from fedpers.config import parse_run_config
from fedpers.interrupt import RunInterrupted, SignalGuard
from fedpers.server_grid import StoppableGrid

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_stop_left():
    interrupt.reset()
    yield
    interrupt.reset()


# ------------------------------------------------------------------ the stop request
@pytest.fixture
def default_handlers():
    """SIGINT and SIGTERM at their defaults, whatever this process inherited (a job
    started in the background by a shell ignores SIGINT, and the guard keeps an ignored
    signal ignored), then put back."""
    inherited = {s: signal.signal(s, signal.SIG_DFL) for s in interrupt.SIGNALS}
    yield
    for s, handler in inherited.items():
        signal.signal(s, handler)


def test_first_signal_requests_a_stop_and_handlers_come_back(default_handlers):
    before = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    with SignalGuard() as guard:
        assert all(signal.getsignal(s) == guard._handle for s in interrupt.SIGNALS)
        interrupt.check()  # nothing asked yet
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this (main) thread
        time.sleep(0.01)
        assert interrupt.stop_requested() == signal.SIGTERM
        with pytest.raises(RunInterrupted, match="stopped by SIGTERM in round 3") as exc:
            interrupt.check("in round 3")
        assert exc.value.exit_code == 143
    assert {s: signal.getsignal(s) for s in interrupt.SIGNALS} == before
    interrupt.reset()
    assert interrupt.stop_requested() == 0
    assert RunInterrupted(signal.SIGINT).exit_code == 130


def test_an_ignored_signal_stays_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with SignalGuard() as guard:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == guard._handle
            guard.install()  # again, as after ray.init
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_second_signal_exits_at_once():
    """The first SIGINT asks politely; the second ends the process (130) even though
    the main thread is busy."""
    code = textwrap.dedent("""
        import os, signal, sys, time
        from fedpers.interrupt import SignalGuard
        with SignalGuard():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            print("first handled", flush=True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        print("not reached", flush=True)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert res.returncode == 130, res.stderr
    assert "first handled" in res.stdout and "not reached" not in res.stdout


class _SlowGrid:
    """One reply per pull, after ``hold`` pulls that bring none."""

    pull_interval = 0.01

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.pulls = 0

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        if self.pulls <= self.hold or not ids:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=min(ids)))]

    def get_node_ids(self):
        return [1, 2]


def test_stoppable_grid_waits_for_replies_until_a_stop_is_requested():
    grid = StoppableGrid(_SlowGrid(hold=3))
    assert len(grid.send_and_receive([object(), object()], timeout=10)) == 2
    assert grid.get_node_ids() == [1, 2]  # the rest is the wrapped grid's
    never = StoppableGrid(_SlowGrid(hold=10 ** 9))
    t0 = time.monotonic()
    assert never.send_and_receive([object()], timeout=0.2) == []  # round-timeout
    assert 0.2 <= time.monotonic() - t0 < 5
    threading.Timer(0.2, interrupt.request_stop, args=(signal.SIGINT,)).start()
    t0 = time.monotonic()
    with pytest.raises(RunInterrupted, match="SIGINT while waiting for replies"):
        never.send_and_receive([object()], timeout=600)
    assert time.monotonic() - t0 < 2  # within a pull or two of the request
    with pytest.raises(RunInterrupted, match="before sending"):
        never.send_and_receive([object()], timeout=600)


def test_interrupted_message_says_how_to_resume():
    from fedpers.cli_commands import interrupted_message
    from fedpers.console import command

    exc = RunInterrupted(signal.SIGINT)
    exc.run_id, exc.checkpoint_round = "abc", 4
    line = interrupted_message(exc, "sqlite:///x.db")
    fedpers = command("fedpers")  # .venv/bin/fedpers where the venv is not on PATH
    assert line == ("interrupted by SIGINT: MLflow run abc is KILLED; resume it from its "
                    f"checkpoint of round 4 with: {fedpers} run --resume abc --tracking-uri "
                    "sqlite:///x.db")
    exc.checkpoint_round = 0
    assert "no checkpoint to resume from (set checkpoint-every" in \
        interrupted_message(exc, "sqlite:///x.db")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_sweep_exits_with_the_signal_status_and_one_line(monkeypatch, capsys,
                                                                       signum):
    import fedpers.bench_sweep
    from fedpers import cli

    def stopped(*args, **kwargs):
        raise RunInterrupted(signum, "in round 2")

    monkeypatch.setattr(fedpers.bench_sweep, "run_benchmark", stopped)
    assert cli.main(["bench", "benchmarks/quickstart", "--no-progress"]) == 128 + signum
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"interrupted by {signal.Signals(signum).name}: the sweep stopped; run the same "
        f"command again to continue it (finished runs are reused)"]


# ------------------------------------------------------------------ the watchdog
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["killed", "done"])
def test_watchdog_kills_what_a_killed_process_leaves_behind(how):
    """A process starts the watchdog, then a child that starts a grandchild (as the
    driver starts the raylet, which starts Ray's agents). SIGKILL to the process
    alone: the watchdog kills both; a normal end (``done``) kills nothing."""
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        from fedpers.simulation import start_reaper, stop_reaper
        reaper = start_reaper()
        child = subprocess.Popen([sys.executable, "-c",
            "import subprocess, sys, time; "
            "g = subprocess.Popen(['sleep', '120']); print(g.pid, flush=True); "
            "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
        grandchild = int(child.stdout.readline())
        time.sleep(3)  # the watchdog has seen them (it looks every 0.5 s)
        print(reaper.pid, child.pid, grandchild, flush=True)
        if {how!r} == "done":
            stop_reaper(reaper)
            print("stopped", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, start_new_session=True)
    left: list[int] = []
    try:
        reaper, child, grandchild = map(int, proc.stdout.readline().split())
        left = [child, grandchild]
        if how == "done":
            assert proc.stdout.readline().strip() == "stopped"
            assert not _alive(reaper)
        proc.kill()  # SIGKILL to the process alone, not its group
        proc.wait(timeout=10)
        deadline = time.monotonic() + (5 if how == "killed" else 1.5)
        while any(map(_alive, [*left, reaper])) and time.monotonic() < deadline:
            time.sleep(0.1)
        if how == "killed":
            assert not any(map(_alive, left))
            assert not _alive(reaper)  # and it is gone too
        else:
            assert all(map(_alive, left))  # nothing killed after a normal end
    finally:
        proc.kill()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_watchdog_process_table_and_descendants():
    from fedpers.reaper import descendants, process_table

    table = process_table()
    assert table[os.getpid()][0] == os.getppid()
    fake = {1: (0, 5), 2: (1, 6), 3: (2, 7), 4: (1, 8), 9: (0, 1)}
    assert descendants({2}, fake) == {3: 7}
    assert descendants({1}, fake) == {2: 6, 3: 7, 4: 8}


# ------------------------------------------------------------------ rounds nobody trained
class _Tracker:
    run_id = "run-1"
    buffering = False

    def __init__(self) -> None:
        self.logged: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics, step):
        assert step not in self.logged
        self.logged[step] = dict(metrics)

    def log_file(self, *args, **kwargs):
        pass


class _Clients:
    """Three clients answering in-process: the handshake, training (each returns the
    model it got, moved by +0.01: an aggregated round moves the global model by
    +0.01) and evaluation. In the rounds of ``fail`` no training reply comes back
    (every client timed out)."""

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.nodes = [11, 12, 13]

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            kind = msg.metadata.message_type
            if kind == MessageType.QUERY:
                info = {"partition-id": self.nodes.index(msg.metadata.dst_node_id),
                        "num-examples": 50}
                content = RecordDict({"info": MetricRecord(info)})
            elif kind == MessageType.TRAIN:
                if int(msg.content["config"]["server-round"]) in self.fail:
                    continue
                arrays = msg.content.array_records["arrays"]
                moved = {k: a.numpy() + np.asarray(0.01, a.numpy().dtype)
                         for k, a in arrays.items()}
                from fedpers.arrays import to_array_record

                content = RecordDict({"arrays": to_array_record(moved),
                                      "metrics": MetricRecord({"num-examples": 50,
                                                               "train-loss": 1.0})})
            else:
                content = RecordDict({"metrics": MetricRecord(
                    {"num-examples": 10, "accuracy": 0.5, "loss": 1.0})})
            replies.append(Message(content, reply_to=msg))
        return replies


def _experiment(rounds: int, fail: set[int]):
    from fedpers.server_app import Experiment

    cfg = parse_run_config({"task": "digits", "num-clients": 3, "num-server-rounds": rounds,
                            "seed": 1, "partition": "iid"})
    tracker = _Tracker()
    exp = Experiment(cfg, _Clients(fail), tracker)
    start = {k: v.copy() for k, v in exp.global_arrays.items()}
    return exp, tracker, start


def _moved(exp, start) -> float:
    """How far the global model moved (+0.01 per aggregated round)."""
    k = next(k for k, v in start.items() if v.dtype.kind == "f")
    return float(np.round(np.mean(exp.global_arrays[k] - start[k]), 6))


@pytest.mark.usefixtures("task_identity")
def test_a_round_where_no_client_trained_logs_only_who_took_part():
    exp, tracker, start = _experiment(4, fail={2})
    exp.run()
    assert sorted(tracker.logged) == [1, 2, 3, 4]
    empty = tracker.logged[2]
    assert empty["clients/selected"] == 3 and empty["clients/failed"] == 3
    assert empty["clients/trained"] == 0
    assert "comm/bytes_down" in empty  # the broadcast was sent all the same
    assert not [k for k in empty if k.startswith(("eval/", "train/"))]
    for rnd in (1, 3, 4):  # the other rounds are evaluated as usual
        assert "eval/global_accuracy" in tracker.logged[rnd], rnd
        assert tracker.logged[rnd]["clients/trained"] == 3
    assert _moved(exp, start) == pytest.approx(0.03)  # round 2 kept the global model


@pytest.mark.usefixtures("task_identity")
def test_the_run_fails_after_three_rounds_in_a_row_with_every_client_failed():
    from fedpers.server_app import MAX_FAILED_ROUNDS

    assert MAX_FAILED_ROUNDS == 3
    # two in a row: the run goes on
    exp, tracker, start = _experiment(5, fail={2, 3})
    exp.run()
    assert sorted(tracker.logged) == [1, 2, 3, 4, 5]
    assert _moved(exp, start) == pytest.approx(0.03)
    # three in a row: it stops there, with the rounds it ran logged
    exp, tracker, _ = _experiment(6, fail={2, 3, 4})
    with pytest.raises(RuntimeError, match=r"rounds 2-4: every client failed or timed out "
                                           r"\(round-timeout = 600 s\), 3 rounds in a row; "
                                           r"the run is FAILED .*no checkpoint"):
        exp.run()
    assert sorted(tracker.logged) == [1, 2, 3, 4]
    assert [tracker.logged[r]["clients/failed"] for r in (2, 3, 4)] == [3, 3, 3]


def test_a_killed_run_with_a_checkpoint_can_be_resumed(tracking_uri):
    """What a stopped run leaves (status KILLED, a checkpoint) is what --resume takes."""
    from fedpers.checkpoint import Checkpoint, CheckpointStore, resume_config
    from fedpers.tracking import Tracker

    tracker = Tracker.start(tracking_uri, "stopped")
    cfg = parse_run_config({"task": "digits", "seed": 4, "checkpoint-every": 1,
                            "mlflow-run-id": tracker.run_id})
    CheckpointStore(tracker).save(Checkpoint(round=2, meta={
        "config": cfg.to_dict(), "mlflow_run_id": tracker.run_id},
        arrays={"global/w": np.zeros(2, np.float32)}))
    tracker.finish("KILLED")
    assert tracker.client.get_run(tracker.run_id).info.status == "KILLED"
    resumed = resume_config(tracking_uri, tracker.run_id)
    assert resumed.seed == 4 and resumed.mlflow_run_id == tracker.run_id


@pytest.mark.usefixtures("task_identity")
def test_a_replayed_round_is_logged_again_only_if_nobody_trained_in_it_before():
    """After a resume, a round the run holds is not logged again, unless no client
    trained in it then (they failed) and some do now."""
    exp, tracker, _ = _experiment(3, fail=set())

    class _Held:
        def __init__(self, held):
            self.held = held

        def logged_metrics(self, rnd, keys):
            return {k: v for k, v in self.held.items() if k in keys}

    now = {"clients/trained": 3.0, "eval/global_accuracy": 0.5}
    exp.checkpoints = _Held({"clients/trained": 3.0, "eval/global_accuracy": 0.5})
    exp._check_replay(2, now)
    assert tracker.logged == {}
    exp.checkpoints = _Held({"clients/trained": 0.0, "clients/failed": 3.0})
    exp._check_replay(2, now)
    assert tracker.logged == {2: now}
