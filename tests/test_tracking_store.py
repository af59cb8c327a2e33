"""Opening MLflow stores: many processes on one new sqlite store, and stores that
cannot be used fail at once with one line naming them (fedpers.tracking_store.prepare_store)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest
from conftest import metric_history
from store_template import fresh_store

from fedpers.cli import main
from fedpers.tracking import Tracker
from fedpers.tracking_store import TrackingError, ensure_experiment, prepare_store


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------ the schema lock
def test_a_new_store_waits_for_the_process_holding_its_lock(tmp_path):
    """The schema of a new store is made only under ``<db>.lock``: while another
    process holds it, nothing touches the database file. A store whose schema is
    complete is opened without the lock (so a read-only folder is readable)."""
    db = tmp_path / "new" / "mlflow.db"
    db.parent.mkdir()
    done = fresh_store(tmp_path / "done")
    with open(tmp_path / "new" / "mlflow.db.lock", "a") as held, \
            open(tmp_path / "done" / "mlflow.db.lock", "a") as held_too:
        fcntl.flock(held, fcntl.LOCK_EX)
        fcntl.flock(held_too, fcntl.LOCK_EX)
        t0 = time.monotonic()
        with pytest.raises(TrackingError, match=r"being set up by another process, which has "
                                                r"held .*mlflow\.db\.lock for over 0 s"):
            prepare_store(f"sqlite:///{db}", create=True, lock_timeout=0.3)
        assert 0.3 <= time.monotonic() - t0 < 5
        assert not db.exists()
        prepare_store(done, create=False, lock_timeout=0.1)  # not waited for
        prepare_store(done, create=True, lock_timeout=0.1)


def test_experiment_created_by_another_process_meanwhile_is_used():
    """get-or-create: the loser of the creation race takes the winner's experiment."""
    made = types.SimpleNamespace(experiment_id="7")
    lookups = iter([None, made])
    created: list[str] = []

    def create_experiment(name, artifact_location=None, tags=None):
        created.append(name)
        raise RuntimeError("UNIQUE constraint failed: experiments.name")

    client = types.SimpleNamespace(get_experiment_by_name=lambda name: next(lookups),
                                   create_experiment=create_experiment)
    assert ensure_experiment(client, "sqlite:///x.db", "race") == "7"
    assert created == ["race"]
    # an experiment that still does not exist: the creation error is raised
    client.get_experiment_by_name = lambda name: None
    with pytest.raises(RuntimeError, match="UNIQUE"):
        ensure_experiment(client, "sqlite:///x.db", "race")


# ------------------------------------------------------------------ unusable stores
def test_a_store_that_cannot_be_written_fails_at_once(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(TrackingError) as info:
        Tracker.start("sqlite:////proc/x.db", "e")
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert "\n" not in msg and "sqlite:////proc/x.db" in msg and "cannot write" in msg


@pytest.mark.slow  # imports Flower and loads the data before the store is opened
def test_cli_run_on_an_unwritable_store_prints_one_line(capsys):
    code = main(["run", "--tracking-uri", "sqlite:////proc/x.db",
                 "--set", "task=digits", "num-clients=2", "num-server-rounds=1"])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "sqlite:////proc/x.db" in line


def test_an_unknown_uri_scheme_is_one_line(capsys):
    with pytest.raises(TrackingError, match=r"cannot use MLflow tracking URI 'foo://bar'"):
        Tracker.connect("foo://bar", create=True)
    assert main(["report", "exp", "--tracking-uri", "foo://bar"]) == 2
    assert "foo://bar" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [
    ["detect", "--run", "0" * 32, "--input", "{rows}"],
    ["report", "some-experiment"],
    ["run", "--resume", "0" * 32],
])
def test_reading_commands_refuse_a_missing_store_and_create_nothing(tmp_path, capsys, argv):
    rows = tmp_path / "rows.csv"
    rows.write_text("1,2,3\n")
    db = tmp_path / "nothing.db"
    uri = f"sqlite:///{db}"
    args = [a.replace("{rows}", str(rows)) for a in argv]
    assert main([*args, "--tracking-uri", uri]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"no MLflow store at {uri}" in line and "does not exist" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]


@pytest.mark.parametrize("create", [False, True])
def test_a_file_that_is_not_a_database_is_named(tmp_path, create):
    db = tmp_path / "notes.db"
    db.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(TrackingError, match=r"notes\.db is not an SQLite database"):
        Tracker.connect(f"sqlite:///{db}", create=create)
    assert db.read_text().startswith("these are my notes")


def test_a_half_migrated_store_is_named(tmp_path):
    """What two unlocked processes could leave behind: a store no MLflow can open."""
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    con.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(TrackingError, match=r"left half-migrated.*_alembic_tmp_"):
        Tracker.connect(f"sqlite:///{db}", create=True)


def _fake_schema(path: Path, revision: str) -> None:
    """Every table MLflow's tracking store needs (empty, one column), at ``revision``."""
    import fedpers.tracking_store as store

    _, needed = store._schema_head()
    con = sqlite3.connect(path)
    for table in needed:
        con.execute(f'CREATE TABLE "{table}" (x INTEGER)')
    con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
    con.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    con.commit()
    con.close()


def test_a_store_of_another_schema_revision_is_named(tmp_path):
    db = tmp_path / "mlflow.db"
    _fake_schema(db, "0123abcd")
    with pytest.raises(TrackingError, match=r"has schema revision 0123abcd, this MLflow needs "
                                            r"\w+: .*mlflow db upgrade sqlite:///"):
        Tracker.connect(f"sqlite:///{db}")


# ------------------------------------------------------------------ concurrent starts
# What `fedpers run` does to the store: open it, get or create the experiment, start a
# run, log the params and each round's metrics in one batch, finish.
WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fedpers.tracking import Tracker
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - imports before the start
    uri, go, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    tr = Tracker.start(uri, "race")
    tr.log_params({"seed": 1, "task": "digits"})
    for rnd in range(1, rounds + 1):
        tr.log_metrics({"comm/bytes_up": 100.0 * rnd, "eval/global_accuracy": rnd / 10,
                        "train/loss": 1.0 / rnd}, step=rnd)
    tr.finish("FINISHED")
    print("run id:", tr.run_id, flush=True)
""")


@pytest.mark.slow  # 4 processes importing MLflow, and one schema creation
def test_four_processes_start_together_on_a_new_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    go, rounds = tmp_path / "go", 5
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, uri, str(go), str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for _ in range(4)]
    try:
        for p in procs:  # every process has imported everything: the starts race
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * 4, "\n----\n".join(outs)
    run_ids = {ln.split()[-1] for out in outs for ln in out.splitlines()
               if ln.startswith("run id:")}
    assert len(run_ids) == 4
    for run_id in run_ids:
        hist = metric_history(uri, run_id)
        for key in ("comm/bytes_up", "eval/global_accuracy", "train/loss"):
            assert [s for s, _ in hist[key]] == list(range(1, rounds + 1)), (run_id, key)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "race"]
    runs = client.search_runs([exp.experiment_id])
    assert {r.info.run_id for r in runs} == run_ids
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.slow  # two real simulations at once
def test_two_fedpers_runs_start_together_on_a_new_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "fedpers.cli", "run", "--tracking-uri", uri,
           "--num-cpus", "1", "--set", "task=digits", "num-clients=2", "num-server-rounds=2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env, cwd=tmp_path) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o[-3000:] for o in outs)
    run_ids = [ln.split()[-1] for out in outs for ln in out.splitlines()
               if ln.startswith("run id:")]
    assert len(set(run_ids)) == 2
    for run_id in run_ids:
        hist = metric_history(uri, run_id)
        assert [s for s, _ in hist["comm/bytes_up"]] == [1, 2]
        assert [s for s, _ in hist["eval/global_accuracy"]] == [1, 2]


def test_the_lock_lets_one_thread_create_and_the_others_wait(tmp_path, monkeypatch):
    """In-process stand-in for the race: four threads prepare one new store; the
    schema is created once (MLflow's creation is replaced by a slow marker)."""
    import fedpers.tracking_store as store

    created: list[int] = []

    def slow_create(uri: str, path: Path) -> None:
        created.append(threading.get_ident())
        time.sleep(0.2)
        _fake_schema(path, store._schema_head()[0])

    monkeypatch.setattr(store, "_create_schema", slow_create)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    errors: list[BaseException] = []

    def prepare() -> None:
        try:
            prepare_store(uri, create=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(created) == 1
