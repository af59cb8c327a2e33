"""What a ``fedpers`` command prints (fedpers.console): one fedpers line per round; Flower's
INFO lines, Ray's lifecycle lines and known warnings only with -v; warnings and errors
always; no bar redraws and no colors in a pipe; hints that name runnable commands."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from store_template import fresh_store

from fedpers import bench_progress, bench_sweep, bench_tags, cli, cli_commands, console

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[")
# Flower's console line below WARNING, maybe forwarded by Ray with a "(Actor pid=1)" prefix
FLOWER_INFO = re.compile(r"^(\([^)]*\)\s*)?(\x1b\[\d+m)?(INFO|DEBUG)\s*(\x1b\[\d+m)?\s*:",
                         re.M)
# any line of Flower's console format (``LEVEL [time]:  message``), whatever its level
FLOWER_LINE = re.compile(r"^(\([^)]*\)\s*)?(\x1b\[\d+m)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)"
                         r"\s*([\d-]+ [\d:,.]+)?\s*(\x1b\[\d+m)?\s*:", re.M)
# the dump of every run-config key that ``fedpers run`` logs with -v
CONFIG_DUMP = re.compile(r"^\S+ fedpers running (\S+): task=\S+ .* lr=(\S+) ", re.M)


class _Records(logging.Handler):
    """Collects what reaches the ``flwr`` logger's handlers (as Flower's console would)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def flwr_records(monkeypatch):
    import flwr.common.logger  # noqa: F401  -- Flower's logger as a run has it (DEBUG)

    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "INFO")  # restored after the test
    flwr_logger = logging.getLogger("flwr")
    handler = _Records()
    flwr_logger.addHandler(handler)
    yield handler
    flwr_logger.removeHandler(handler)
    for f in [f for f in flwr_logger.filters if isinstance(f, console.FlowerFilter)]:
        flwr_logger.removeFilter(f)


def test_flower_info_needs_verbose_and_its_warnings_always_show(flwr_records):
    flwr_logger = logging.getLogger("flwr")
    cli._setup_logging(verbose=False)
    flwr_logger.info("configure_train: Sampled 10 nodes (out of 10)")
    flwr_logger.debug("backend_config: {'init_args': {}}")
    flwr_logger.warning("Manually terminating ClientAppActor")  # a lifecycle line
    flwr_logger.warning("client 3 did not reply within the round timeout")
    flwr_logger.error("ClientApp raised an exception")
    assert flwr_records.messages == ["client 3 did not reply within the round timeout",
                                     "ClientApp raised an exception"]

    flwr_records.messages.clear()
    cli._setup_logging(verbose=True)
    flwr_logger.info("configure_train: Sampled 10 nodes (out of 10)")
    flwr_logger.warning("Manually terminating ClientAppActor")
    assert flwr_records.messages == ["configure_train: Sampled 10 nodes (out of 10)",
                                     "Manually terminating ClientAppActor"]


def test_flower_console_has_no_colors_off_a_terminal(flwr_records):
    from flwr.common.logger import console_handler

    cli._setup_logging(verbose=False)
    stream = io.StringIO()
    old_stream, old_colored = console_handler.stream, console_handler.colored
    console_handler.setStream(stream)
    try:
        console.flower_console(verbose=False)
        logging.getLogger("flwr").warning("client 3 failed")
    finally:
        console_handler.setStream(old_stream)
        console_handler.colored = old_colored
    assert stream.getvalue().startswith("WARNING")
    assert "client 3 failed" in stream.getvalue()
    assert not ANSI.search(stream.getvalue())


def test_known_warnings_are_ignored_unless_verbose_even_after_flower_import(flwr_records):
    tip = "Tip: In future versions of Ray, Ray will no longer override accelerator ..."
    noload = "The ``noload`` loader strategy is deprecated and will be removed"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # as a library that resets filters would
        cli._setup_logging(verbose=False)
        # what importing flwr.simulation does: a filter in front of ours
        warnings.filterwarnings("once", category=DeprecationWarning)
        console.flower_console(verbose=False)
        warnings.warn(tip, FutureWarning, stacklevel=1)
        warnings.warn(noload, DeprecationWarning, stacklevel=1)
        warnings.warn("a warning nobody knows", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a warning nobody knows"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cli._setup_logging(verbose=True)
        warnings.warn(tip, FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == [tip]


@pytest.mark.parametrize("line, kept", [
    ("\x1b[92mINFO \x1b[0m:      configure_train: Sampled 2 nodes (out of 2)", False),
    ("DEBUG 2026-12-06 03:09:17,123:      Constructed ActorPool with: 2 actors", False),
    ("\x1b[93mWARNING \x1b[0m:   Manually terminating ClientAppActor", False),
    ("\x1b[93mWARNING \x1b[0m:   Actor(abc) will be remove from pool.", True),
    ("\x1b[91mERROR \x1b[0m:     ClientApp raised an exception", True),
    ("Traceback (most recent call last):", True),
    ("ValueError: INFO : not a Flower line", True),
    ("training client 3", True),
])
def test_worker_lines(line, kept):
    assert console.keep_worker_line(line) is kept


def test_ray_forwards_worker_lines_through_the_filter():
    """The filter wraps Ray's own forwarding handler, found by name in Ray's dispatcher."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as disp

    got: list[list[str]] = []
    disp.add_handler("ray_print_logs", lambda data: got.append(data["lines"]))
    try:
        assert console.filter_worker_logs(verbose=False)
        assert not console.filter_worker_logs(verbose=False)  # wrapped once
        disp.emit({"lines": ["\x1b[92mINFO \x1b[0m:      aggregate_train: Received 2",
                             "Traceback (most recent call last):",
                             "WARNING :   Manually terminating ClientAppActor"]})
        disp.emit({"lines": ["INFO :      configure_evaluate: Sampled 2 nodes"]})
    finally:
        disp.remove_handler("ray_print_logs")
    assert got == [["Traceback (most recent call last):"]]
    assert not console.filter_worker_logs(verbose=True)


def _venv(tmp_path: Path, monkeypatch, *scripts: str) -> Path:
    """A fake venv under tmp_path/.venv with ``scripts``; this Python 'runs from it'."""
    bindir = tmp_path / ".venv" / "bin"
    bindir.mkdir(parents=True)
    for name in scripts:
        path = bindir / name
        path.write_text("#!/bin/sh\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    monkeypatch.chdir(tmp_path)
    return bindir


def test_hint_names_the_venv_script_when_path_does_not_find_it(tmp_path, monkeypatch):
    bindir = _venv(tmp_path, monkeypatch, "mlflow")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert console.command("mlflow") == ".venv/bin/mlflow"
    monkeypatch.chdir("/")
    assert console.command("mlflow") == str(bindir / "mlflow")
    monkeypatch.setenv("PATH", str(bindir))  # an activated venv
    assert console.command("mlflow") == "mlflow"
    assert console.command("fedpers") == "fedpers"  # not beside this Python: as it is


def test_run_summary_hint_is_runnable(tmp_path, monkeypatch, capsys):
    from fedpers.tracking import Tracker

    uri = fresh_store(tmp_path)
    tracker = Tracker.start(uri, "hints")
    tracker.finish("FINISHED")
    _venv(tmp_path, monkeypatch, "mlflow")
    monkeypatch.setenv("PATH", "/nonexistent")
    cli_commands.print_summary(tracker.run_id, uri)
    out = capsys.readouterr().out
    assert f"open it with: .venv/bin/mlflow ui --backend-store-uri {uri}" in out
    # and the page that opens on the run in the model-training view
    exp = tracker.client.get_run(tracker.run_id).info.experiment_id
    assert (f"then: http://127.0.0.1:5000/#/experiments/{exp}/runs/{tracker.run_id}"
            f"?workflowType=machine_learning") in out


SWEEP = """
seeds = [0]

[base]
task = "digits"
num-clients = 2
num-server-rounds = 2

[variants.a]
lr = 0.1

[variants.b]
lr = 0.2
"""


def test_bench_in_a_pipe_prints_one_line_per_run_and_no_bar(tmp_path, monkeypatch, capsys):
    """stdout/stderr captured (not a terminal): no tqdm redraws, a plain line per run."""
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "benchmark.toml").write_text(SWEEP)
    (folder / "README.md").write_text("# q\n\nexpected\n")

    def fake_child(run, bench_, parent, client, progress, verbose, resources=None,
                   shared_ray=None):
        from fedpers.tracking import Tracker
        tags = {bench_tags.TAG_PARENT: parent, bench_tags.TAG_BENCH: bench_.name,
                bench_tags.TAG_VARIANT: run.variant, bench_tags.TAG_SEED: str(run.seed),
                bench_tags.TAG_DIGEST: run.digest}
        tracker = Tracker.start(run.cfg.tracking_uri, run.cfg.experiment,
                                run_name=run.run_name, tags=tags)
        progress.at_round(1)
        progress.at_round(2)
        tracker.finish("FINISHED")
        return tracker.run_id

    monkeypatch.setattr(bench_sweep, "_run_child", fake_child)
    _venv(tmp_path, monkeypatch, "fedpers")
    monkeypatch.setenv("PATH", "/nonexistent")
    uri = fresh_store(tmp_path)
    assert cli.main(["bench", str(folder), "--tracking-uri", uri]) == 0
    cap = capsys.readouterr()
    assert "\r" not in cap.out + cap.err
    done = re.findall(r"fedpers sweep: (\d)/2 runs done", cap.out)
    assert done == ["1", "2"]
    assert re.search(r"report: \.venv/bin/fedpers report \w+ --tracking-uri", cap.out)


def test_progress_bar_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(console, "interactive", lambda: True)
    runs = tuple(SimpleNamespace(cfg=SimpleNamespace(num_server_rounds=3), run_name=f"r{i}")
                 for i in range(2))
    progress = bench_progress.Progress(runs, set(), enabled=True)
    assert progress.shown
    progress.at_round(2)
    progress.run_done(runs[0])
    progress.close()
    assert "\r" in capsys.readouterr().err  # a bar that redraws
    monkeypatch.setattr(console, "interactive", lambda: False)
    assert not bench_progress.Progress(runs, set(), enabled=True).shown


def test_run_dumps_its_config_only_when_verbose(tmp_path, monkeypatch, capsys):
    """Without -v no line lists every key; with -v one does, with the values in effect
    (the task's defaults applied)."""
    import fedpers.simulation
    from fedpers import cli_commands
    from fedpers.data.defaults import TASK_DEFAULTS

    seen = []
    monkeypatch.setattr(fedpers.simulation, "run_simulation",
                        lambda cfg, **kw: seen.append(cfg) or "r1")
    monkeypatch.setattr(cli_commands, "print_summary", lambda run_id, uri: None)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    args = ["run", "--set", "task=digits", "num-clients=3", "--tracking-uri", uri]
    assert cli.main([*args, "-v"]) == 0
    loud = capsys.readouterr().out
    assert cli.main(args) == 0  # last: the tests after this one find the default verbosity
    quiet = capsys.readouterr().out
    assert len(seen) == 2 and "run id: r1" in quiet
    assert not CONFIG_DUMP.search(quiet), quiet
    dump = CONFIG_DUMP.search(loud)
    assert dump and dump.groups() == ("digits", str(TASK_DEFAULTS["digits"]["lr"])), loud
    assert "num-clients=3 " in dump.group(0) and f"tracking-uri={uri} " in loud


# ------------------------------------------------------------ end to end (slow)
def _fedpers(args: list[str], cwd: Path, timeout: float) -> tuple[str, str, dict]:
    """``fedpers ARGS`` in a fresh process, stdout and stderr to pipes, the venv's bin/
    not on PATH (as when the venv is not activated)."""
    bindir = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != Path(bindir).resolve())
    env = {**os.environ, "PATH": path or "/usr/bin:/bin", "FLWR_TELEMETRY_ENABLED": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_LOGGING_LEVEL", None)
    proc = subprocess.run([sys.executable, "-m", "fedpers.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, proc.stderr, env


def _assert_quiet(out: str, err: str) -> None:
    both = out + err
    assert not FLOWER_INFO.search(both), both
    assert "\r" not in both
    assert not ANSI.search(both), both
    assert "Manually terminating" not in both
    assert "FutureWarning" not in both


def _hint_runs(hint: str, cwd: Path, env: dict) -> None:
    """The hint's executable exists (a path) or is on the process's PATH."""
    if "/" in hint:
        assert (cwd / hint).exists(), hint
    else:
        assert shutil.which(hint, path=env["PATH"]), hint


@pytest.mark.slow
def test_run_prints_one_line_per_round_and_a_runnable_hint(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    out, err, env = _fedpers(["run", "--set", "task=digits", "num-clients=2",
                              "num-server-rounds=2", "--tracking-uri", uri],
                             tmp_path, timeout=600)
    _assert_quiet(out, err)
    assert not FLOWER_LINE.search(out + err), out + err  # no line of Flower's logger
    assert not CONFIG_DUMP.search(out), out
    assert re.findall(r"^\S+ fedpers round (\d+)/2 ", out, re.M) == ["1", "2"], out
    hint = re.search(r"^open it with: (\S+) ui --backend-store-uri (\S+)$", out, re.M)
    assert hint and hint.group(2) == uri, out
    _hint_runs(hint.group(1), tmp_path, env)


@pytest.mark.slow
def test_bench_quick_in_a_pipe_has_no_bar_redraws(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    out, err, env = _fedpers(["bench", str(ROOT / "benchmarks" / "quickstart"), "--quick",
                              "--tracking-uri", uri], tmp_path, timeout=900)
    _assert_quiet(out, err)
    runs = re.findall(r"fedpers sweep: (\d+)/(\d+) runs done", out)
    assert runs and [int(k) for k, _ in runs] == list(range(1, int(runs[0][1]) + 1)), out
    hint = re.search(r"^report: (\S+) report \w+ --tracking-uri (\S+)$", out, re.M)
    assert hint and hint.group(2) == uri, out
    _hint_runs(hint.group(1), tmp_path, env)


@pytest.mark.slow
def test_verbose_run_shows_flower_lines_and_the_config(tmp_path):
    """The lines a quiet run hides are there with -v: Flower's INFO lines (each round's
    ``configure_train: Sampled ...``) and the dump of every run-config key."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    out, err, _ = _fedpers(["run", "-v", "--set", "task=digits", "num-clients=2",
                            "num-server-rounds=2", "--tracking-uri", uri],
                           tmp_path, timeout=600)
    both = out + err
    assert len(re.findall(r"configure_train: Sampled \d+ nodes", both)) == 2, both
    flower = [m.group(3) for m in FLOWER_LINE.finditer(both)]  # with -v: timestamped
    assert "INFO" in flower and "DEBUG" in flower, both
    assert CONFIG_DUMP.search(out), out
    assert re.findall(r"^\S+ fedpers round (\d+)/2 ", out, re.M) == ["1", "2"], out
