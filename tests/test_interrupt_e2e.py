"""Clean interruption end to end: a real ``fedpers run`` stopped by SIGINT (Ctrl-C:
the whole process group), SIGTERM (the process alone) and SIGKILL (the process
alone), each at a seeded random round, each time resumed with ``--resume``, ends
with every metric of every round equal, exactly, to an uninterrupted run with the
same seed (logged once). Each stop: the expected exit status (130, 143, killed),
MLflow status (KILLED, KILLED, RUNNING), no round logged after the signal, a one-line
message on how to resume, and no process of the run left a few seconds later.

One chain (run, stop, resume, stop, resume, stop, resume) and one reference run
keep it to five small runs (digits, 3 clients, 6 rounds).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, metric_history

from fedpers.checkpoint import CheckpointStore
from fedpers.tracking import Tracker

ROUNDS = 6
SETS = ["task=digits", "num-clients=3", f"num-server-rounds={ROUNDS}", "partition=iid",
        "local-epochs=1", "seed=5", "checkpoint-every=1"]
# a stop takes well under this on an idle machine (about 3-5 s); a loaded one is slower
STOP_S = 45.0
LEFTOVER_S = 5.0  # processes of the run must be gone this long after it ends


def _default_sigint() -> None:
    """A background job of a non-interactive shell starts with SIGINT ignored (and
    passes that on): give the run Ctrl-C's usual meaning."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Run:
    """``fedpers run ARGS`` in its own session, its output collected by a thread."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedpers.cli", "run", *args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, start_new_session=True,
            preexec_fn=_default_sigint)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{needle!r} never came:\n{self.text[-3000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = 600) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=30)
        return rc

    def run_id(self) -> str:
        found = re.findall(r"MLflow run ([0-9a-f]{32})", self.text)
        assert found, self.text[-3000:]
        return found[0]


def _session_processes(sid: int) -> list[str]:
    """Live (not zombie) processes of session ``sid``, as 'pid name'."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                data = fh.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(f"{name} {comm}")
    return out


def _no_leftovers(run: _Run) -> None:
    deadline = time.monotonic() + LEFTOVER_S
    while (left := _session_processes(run.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"still running {LEFTOVER_S:g} s after the run ended: {left}"


def _progress_rounds(text: str) -> list[int]:
    return [int(r) for r in re.findall(rf"fedpers round (\d+)/{ROUNDS} \|", text)]


def _stop(run: _Run, at_round: int, sig: int, group: bool, uri: str) -> tuple[str, float]:
    """Send ``sig`` once round ``at_round`` is logged and checkpointed (so: in the
    round after it); check what the stop left."""
    run.wait_for(f"fedpers round {at_round}: checkpoint stored")
    run_id = run.run_id()
    (os.killpg if group else os.kill)(run.proc.pid, sig)
    t0 = time.monotonic()
    rc = run.finish(timeout=300)
    took = time.monotonic() - t0
    text = run.text
    tracker = Tracker(uri, run_id)
    status = tracker.client.get_run(run_id).info.status
    logged = CheckpointStore(tracker).logged_rounds()
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
        assert status == "RUNNING"
    else:
        name = signal.Signals(sig).name
        assert rc == 128 + sig, text[-3000:]
        assert took < STOP_S, f"{took:.1f} s to stop:\n{text[-3000:]}"
        assert status == "KILLED"
        assert "Traceback" not in text and "Aborted" not in text, text[-3000:]
        after = text.split(f"fedpers {name}: stopping the run", 1)
        assert len(after) == 2, text[-3000:]
        assert not _progress_rounds(after[1])  # no round logged after the signal
        resume = (f"interrupted by {name}: MLflow run {run_id} is KILLED; resume it from its "
                  f"checkpoint of round ")
        assert resume in text and f"fedpers run --resume {run_id} --tracking-uri {uri}" in text
        # what MLflow holds is what the output showed (a round's line follows its
        # logging: the signal may fall between the two)
        shown = max(_progress_rounds(after[0]))
        assert set(range(1, shown + 1)) <= logged <= set(range(1, shown + 2))
    assert at_round in logged
    _no_leftovers(run)
    return run_id, took


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_interrupted_runs_resume_to_exactly_the_uninterrupted_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--tracking-uri", uri]
    sets = ["--set", *SETS, f"client-state-dir={tmp_path / 'client-state'}"]

    ref = _Run(*sets, *common)
    assert ref.finish() == 0, ref.text[-3000:]
    ref_id = ref.run_id()

    # stop rounds: seeded, increasing, each before the last round
    a, b, c = sorted(random.Random(2026).sample(range(1, ROUNDS), 3))
    run_id, took_int = _stop(_Run(*sets, *common), a, signal.SIGINT, True, uri)
    resumed, took_term = _stop(_Run("--resume", run_id, *common), b, signal.SIGTERM,
                               False, uri)
    assert resumed == run_id
    _stop(_Run("--resume", run_id, *common), c, signal.SIGKILL, False, uri)
    last = _Run("--resume", run_id, *common)
    assert last.finish() == 0, last.text[-3000:]
    assert "resumed from the checkpoint of round" in last.text
    assert Tracker(uri, run_id).client.get_run(run_id).info.status == "FINISHED"
    _no_leftovers(last)

    want, got = metric_history(uri, ref_id), metric_history(uri, run_id)
    assert "eval/global_accuracy" in want and "train/loss" in want
    assert set(got) == set(want)
    for key, history in want.items():
        assert [s for s, _ in history] == list(range(1, ROUNDS + 1)), key
        assert got[key] == history, key  # every round once, bit for bit
    print(f"stopped at rounds {a}, {b}, {c}; SIGINT took {took_int:.1f} s, "
          f"SIGTERM {took_term:.1f} s to exit")
