"""Checkpoint and resume: fedpers.checkpoint, fedpers.client_state, ``--resume``.

The end-to-end test kills a real ``fedpers run`` (its whole process group: the
driver and its Ray workers, as a machine crash would) with SIGKILL after round 4
(checkpoint of round 3 stored, round 4 logged), resumes it with
``fedpers run --resume RUN_ID`` and checks that every metric of every round equals,
exactly, the same round of an uninterrupted run with the same seed, and is logged
once. Exact equality is the right bar: a fedpers run is deterministic for a seed
(every draw is seeded per round, aggregation is in partition order), and a
checkpoint restores bit-exact float32 arrays.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import metric_history
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedpers import client_state
from fedpers.checkpoint import (
    MAGIC,
    Checkpoint,
    CheckpointError,
    CheckpointFormatError,
    CheckpointStore,
    check_compatible,
    decode,
    encode,
    resume_config,
)
from fedpers.config import parse_run_config
from fedpers.state import is_stateless, require_state_protocol
from fedpers.tracking import Tracker
from fedpers.tracking_store import TrackingError
from strategies import STRATEGIES, StrategyParams


# ------------------------------------------------------------------ file format
def _ckpt() -> Checkpoint:
    return Checkpoint(round=3, meta={"config": {"seed": 1}, "mlflow_run_id": "abc",
                                     "threshold": 0.1 + 0.2, "loss": np.float32(0.5)},
                      arrays={"global/w": np.arange(6, dtype=np.float32).reshape(2, 3),
                              "global/n": np.array(7, dtype=np.int64)})


def test_checkpoint_bytes_round_trip_exactly():
    back = decode(encode(_ckpt()))
    assert back.round == 3
    assert back.meta["threshold"] == 0.1 + 0.2  # floats survive JSON bit for bit
    assert back.meta["loss"] == 0.5
    assert back.arrays["global/w"].dtype == np.float32
    np.testing.assert_array_equal(back.arrays["global/w"], np.arange(6).reshape(2, 3))
    assert back.arrays["global/n"].shape == () and back.arrays["global/n"] == 7


@pytest.mark.parametrize("cut", [1, 20, 47, -1])
def test_a_torn_or_corrupt_checkpoint_is_refused(cut):
    blob = encode(_ckpt())
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        decode(blob[:cut] if cut == -1 else blob[:len(blob) - cut])
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    with pytest.raises(CheckpointError):
        decode(bytes(flipped))
    with pytest.raises(CheckpointError, match="bad header"):
        decode(b"garbage" + blob)


# ------------------------------------------------------------------ strategy state
def _stateful(name: str) -> bool:
    return not is_stateless(STRATEGIES[name].build(parse_run_config({"strategy": name})))


def _all_state_attrs_filled(name: str):
    """A strategy of each kind after one aggregation-like step of state."""
    cfg = parse_run_config({"strategy": name, "num-clients": 3})
    spec = STRATEGIES[name]
    strat = spec.build(StrategyParams.from_config(cfg))
    rng = np.random.default_rng(0)
    for attr in strat.state_attrs:
        current = getattr(strat, attr)
        if attr == "momentum_vector":
            value = [rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(4)]
        elif attr == "current_arrays" and name == "fedavgm":  # FedAvgM keeps an ArrayRecord
            value = ArrayRecord({"w": Array(rng.standard_normal((2, 3)).astype(np.float32))})
        else:
            value = {"w": rng.standard_normal((2, 3)).astype(np.float32),
                     "b": rng.standard_normal(3)}
        assert current is None  # fresh strategies hold no state yet
        setattr(strat, attr, value)
    return spec, strat


def _same(a, b) -> None:
    if isinstance(a, ArrayRecord):
        assert isinstance(b, ArrayRecord) and list(a) == list(b)
        for k in a:
            np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())
            assert a[k].numpy().dtype == b[k].numpy().dtype
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            assert a[k].dtype == b[k].dtype
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype
    else:
        assert a is None and b is None


def _through_a_file(state):
    back = decode(encode(Checkpoint.of_states(1, {}, {"strategy": state})))
    return back.states()["strategy"]


def test_every_stateful_strategy_has_its_state_methods():
    expected = {"scaffold": {"control", "current"}, "fednova": {"current"},
                "fedadam": {"current_arrays", "m_t", "v_t"},
                "fedyogi": {"current_arrays", "m_t", "v_t"},
                "fedavgm": {"current_arrays", "momentum_vector"}}
    built = {n: s.build(parse_run_config({"strategy": n})) for n, s in STRATEGIES.items()}
    assert {n: set(s.state_attrs) for n, s in built.items() if _stateful(n)} == expected
    assert {n for n in built if not _stateful(n)} == {"fedavg", "fedprox"}
    for name, strat in built.items():
        require_state_protocol(name, strat)
        for attr in getattr(strat, "state_attrs", ()):
            assert hasattr(strat, attr), (name, attr)


@pytest.mark.parametrize("name", [n for n in STRATEGIES if _stateful(n)])
def test_strategy_state_round_trips_through_a_checkpoint(name):
    _, strat = _all_state_attrs_filled(name)
    fresh = STRATEGIES[name].build(parse_run_config({"strategy": name, "num-clients": 3}))
    fresh.load_state_dict(_through_a_file(strat.state_dict()))
    for attr in strat.state_attrs:
        _same(getattr(strat, attr), getattr(fresh, attr))


def test_none_state_round_trips_as_none():
    strat = STRATEGIES["fedadam"].build(parse_run_config({"strategy": "fedadam"}))
    state = _through_a_file(strat.state_dict())
    assert all(v is None for v in state.values())
    strat.m_t = {"w": np.ones(2)}
    strat.load_state_dict(state)
    assert strat.m_t is None


def test_a_checkpoint_of_an_older_format_is_refused_naming_its_version():
    blob = encode(_ckpt())
    payload = blob[len(MAGIC) + 32:]
    with np.load(io.BytesIO(payload)) as npz:
        entries = dict(npz)
    meta = json.loads(entries["meta"].tobytes().decode())
    meta["format"] = 1
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **entries)
    old = MAGIC + hashlib.sha256(buf.getvalue()).digest() + buf.getvalue()
    with pytest.raises(CheckpointFormatError, match=r"checkpoint format 1 .*reads format 2"):
        decode(old)


@pytest.mark.usefixtures("task_identity")  # Messages outside an app
def test_restored_scaffold_steps_exactly_like_the_original():
    """Golden numbers: c moves by sum(delta c_i) / N from the restored c."""
    from flwr.app import Message, MessageType

    from fedpers.arrays import to_array_record
    from strategies.scaffold import CONTROL

    spec = STRATEGIES["scaffold"]
    cfg = parse_run_config({"strategy": "scaffold", "num-clients": 4})
    strat = spec.build(StrategyParams.from_config(cfg))
    strat.control = {"w": np.array([1.0, -2.0], dtype=np.float32)}
    strat.current = {"w": np.array([0.5, 0.5], dtype=np.float32)}
    resumed = spec.build(StrategyParams.from_config(cfg))
    resumed.load_state_dict(_through_a_file(strat.state_dict()))

    def reply(y, dc, n):
        ins = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=7)
        return Message(RecordDict({
            "arrays": to_array_record({"w": np.array(y, np.float32)}),
            "metrics": MetricRecord({"num-examples": n}),
            CONTROL: to_array_record({"w": np.array(dc, np.float32)})}), reply_to=ins)

    out = []
    for s in (strat, resumed):
        arrays, _ = s.aggregate_train(1, [reply([1.5, 0.5], [4.0, 0.0], 1),
                                          reply([0.5, 2.5], [0.0, 8.0], 3)])
        out.append((arrays["w"].numpy(), s.control["w"]))
    # x = 0.5 + (1*1.0 + 3*0.0)/4 = 0.75 ; 0.5 + (0 + 3*2)/4 = 2.0
    np.testing.assert_allclose(out[0][0], [0.75, 2.0])
    # c = [1, -2] + [4, 8] / 4 = [2, 0]
    np.testing.assert_allclose(out[0][1], [2.0, 0.0])
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


# ------------------------------------------------------------------ config checks
def test_a_checkpoint_of_a_different_config_refuses_to_resume():
    saved = parse_run_config({"task": "digits", "seed": 1, "checkpoint-every": 2}).to_dict()
    same = parse_run_config({"task": "digits", "seed": 1, "checkpoint-every": 5,
                             "tracking-uri": "sqlite:///elsewhere.db",
                             "client-state-dir": "/tmp/x", "mlflow-run-id": "r1"})
    check_compatible(saved, same)  # keys that do not change results may differ
    other = parse_run_config({"task": "digits", "seed": 2, "lr": 0.2})
    with pytest.raises(CheckpointError, match=r"lr = 0\.1 in the checkpoint, 0\.2 now.*"
                                              r"seed = 1 in the checkpoint, 2 now"):
        check_compatible(saved, other)


# ------------------------------------------------------------------ the MLflow store
def test_store_keeps_the_newest_two_and_skips_a_torn_one(tracking_uri, caplog, monkeypatch):
    # fedpers' CLI stops its logger propagating to the root, where caplog listens
    monkeypatch.setattr(logging.getLogger("fedpers"), "propagate", True)
    tracker = Tracker.start(tracking_uri, "ckpt")
    store = CheckpointStore(tracker)
    cfg = parse_run_config({"task": "digits", "mlflow-run-id": tracker.run_id})
    assert store.latest() is None and store.rounds() == []
    for rnd in (2, 4, 6):
        store.save(Checkpoint(round=rnd, meta={"config": cfg.to_dict(),
                                               "mlflow_run_id": tracker.run_id},
                              arrays={"global/w": np.full(3, rnd, np.float32)}))
    assert store.rounds() == [4, 6]
    assert store.resume_point(cfg).round == 6
    # a crash while round 6 was copied: a truncated file; resume falls back to round 4
    art = tracker.client.get_run(tracker.run_id).info.artifact_uri
    newest = Path(art.removeprefix("file://")) / "checkpoints" / "round-000006.ckpt"
    newest.write_bytes(newest.read_bytes()[:100])
    latest = store.latest()
    assert latest.round == 4 and latest.arrays["global/w"].tolist() == [4, 4, 4]
    assert "checkpoint of round 6 is unusable" in caplog.text
    with pytest.raises(CheckpointError, match="different config"):
        store.resume_point(cfg.replace(seed=5))
    # which rounds the run holds, and their values (what a replayed round is checked by)
    assert store.logged_rounds() == set()
    for step in (1, 2, 4):
        tracker.log_metrics({"comm/bytes_up": 10.0 * step, "eval/global_accuracy": 0.25},
                            step=step)
    assert store.logged_rounds() == {1, 2, 4}
    assert store.logged_metrics(2, ["comm/bytes_up", "eval/global_accuracy", "nope"]) == {
        "comm/bytes_up": 20.0, "eval/global_accuracy": 0.25}


def test_resume_errors_are_clear(tracking_uri):
    with pytest.raises(TrackingError, match="no MLflow store at .*does not exist"):
        resume_config(tracking_uri, "nope")
    tracker = Tracker.start(tracking_uri, "ckpt")
    with pytest.raises(TrackingError, match="'nope' not found"):
        resume_config(tracking_uri, "nope")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        resume_config(tracking_uri, tracker.run_id)
    tracker.finish("FINISHED")
    with pytest.raises(CheckpointError, match="FINISHED; there is nothing to resume"):
        resume_config(tracking_uri, tracker.run_id)


def test_cli_resume_refuses_unknown_and_finished_runs(tracking_uri, capsys):
    from fedpers.cli import main

    assert main(["run", "--resume", "0" * 32, "--tracking-uri", tracking_uri]) == 2
    assert "does not exist" in capsys.readouterr().err
    tracker = Tracker.start(tracking_uri, "ckpt")
    assert main(["run", "--resume", "0" * 32, "--tracking-uri", tracking_uri]) == 2
    assert "not found" in capsys.readouterr().err
    tracker.finish("FINISHED")
    assert main(["run", "--resume", tracker.run_id, "--tracking-uri", tracking_uri]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["run", "--resume", tracker.run_id, "--set", "seed=3"]) == 2
    assert "own config" in capsys.readouterr().err


# ------------------------------------------------------------------ client state on disk
def _state() -> RecordDict:
    return RecordDict({
        "scaffold-ci": ArrayRecord({"w": Array(np.array([1.5, -2.0], np.float32))}),
        "ef-residual": ArrayRecord({"w": Array(np.array([1e-8, 3.0], np.float32))}),
        "meta": ConfigRecord({"note": "x", "n": 3})})


def test_client_state_round_trips_and_old_rounds_are_pruned(tmp_path):
    folder = client_state.state_folder(tmp_path, "run1", 2)
    sha3, size = client_state.save(_state(), folder, 3)
    assert size == len(client_state.serialize(_state()))
    sha6, _ = client_state.save(RecordDict(), folder, 6, keep=[3])
    client_state.save(_state(), folder, 9, keep=[6])
    assert sorted(p.name for p in folder.iterdir()) == ["round-000006.state",
                                                        "round-000009.state"]
    assert len(client_state.load(folder, 6, sha6)) == 0
    with pytest.raises(client_state.ClientStateError, match="no checkpointed client state"):
        client_state.load(folder, 3, sha3)
    sha9 = client_state.save(_state(), folder, 9, keep=[6])[0]
    back = client_state.load(folder, 9, sha9)
    np.testing.assert_array_equal(back["scaffold-ci"]["w"].numpy(), [1.5, -2.0])
    np.testing.assert_array_equal(back["ef-residual"]["w"].numpy(),
                                  np.array([1e-8, 3.0], np.float32))
    assert dict(back["meta"]) == {"note": "x", "n": 3}
    with pytest.raises(client_state.ClientStateError, match="not the state"):
        client_state.load(folder, 9, sha6)
    target = RecordDict({"stale": ConfigRecord({"a": 1})})
    client_state.replace_state(target, back)
    assert sorted(target) == ["ef-residual", "meta", "scaffold-ci"]
    client_state.drop(tmp_path, "run1", 2)
    assert not (tmp_path / "run1").exists()


def test_client_state_folder_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert client_state.state_root({}, "") == tmp_path / "cache" / "fedpers" / "client-state"
    assert client_state.state_root({}, str(tmp_path / "run")) == tmp_path / "run"
    node = {"client-state-dir": str(tmp_path / "node")}
    assert client_state.state_root(node, str(tmp_path / "run")) == tmp_path / "node"
    for bad in ("../x", "a/b", "", "/etc"):
        with pytest.raises(client_state.ClientStateError, match="invalid state key"):
            client_state.state_folder(tmp_path, bad, 0)


# ------------------------------------------------------------------ end to end
E2E = ["task=digits", "num-clients=3", "num-server-rounds=6", "local-epochs=1",
       "partition=dirichlet", "alpha=0.5", "batch-size=32", "lr=0.1", "seed=7",
       # SCAFFOLD (server c, client c_i) + FedPer (private head) + top-k with error
       # feedback (residual): all three kinds of client state
       "strategy=scaffold", "personalization=fedper", "codec=topk", "error-feedback=true",
       "sparse-fraction=0.1",
       # pow-d picks 2 of 3 by their last losses: the selection statistics matter, and
       # the client left out keeps its state; the simulated clock runs (time/total_s)
       "selection=pow-d", "fraction-train=0.67", "device-profile=lognormal",
       "checkpoint-every=3"]


def _fedpers(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedpers.cli", "run", *args]


def _run_id(text: str) -> str:
    found = re.findall(r"MLflow run ([0-9a-f]{32})", text)
    assert found, text[-3000:]
    return found[0]


@pytest.mark.slow
def test_killed_run_resumes_to_exactly_the_uninterrupted_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state_dir = tmp_path / "client-state"
    common = ["--tracking-uri", uri]
    sets = ["--set", *E2E, f"client-state-dir={state_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    ref = subprocess.run(_fedpers(*sets, *common), capture_output=True, text=True,
                         timeout=900, env=env)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    ref_id = _run_id(ref.stdout)

    # the same run, killed (driver + Ray workers) once round 4 is logged
    proc = subprocess.Popen(_fedpers(*sets, *common), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "fedpers round 4/6" in line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    text = "".join(lines)
    assert "fedpers round 4/6" in text, text[-3000:]
    run_id = _run_id(text)
    tracker = Tracker(uri, run_id)
    assert tracker.client.get_run(run_id).info.status == "RUNNING"  # killed, not finished
    store = CheckpointStore(tracker)
    assert store.rounds() == [3]
    logged = store.logged_rounds()
    assert {1, 2, 3, 4} <= logged <= {1, 2, 3, 4, 5}  # round 4 (and 5?) are replayed
    assert (state_dir / run_id / "partition-0" / "round-000003.state").is_file()

    res = subprocess.run(_fedpers("--resume", run_id, *common), capture_output=True,
                         text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed from the checkpoint of round 3: 3 of 3 clients restored" in res.stdout
    assert "round 4: replayed; its metrics were logged before the interruption, " \
           "identical" in res.stdout
    assert tracker.client.get_run(run_id).info.status == "FINISHED"

    want, got = metric_history(uri, ref_id), metric_history(uri, run_id)
    assert set(got) == set(want)
    for key in ("eval/global_accuracy", "comm/bytes_up_total", "comm/bytes_down_total",
                "eval/client_accuracy_mean", "train/loss", "time/total_s",
                "clients/trained", "fairness/jain_selection"):
        assert key in want, key
    for key, history in want.items():
        assert [s for s, _ in history] == list(range(1, 7)), key
        assert got[key] == history, key  # every round once, bit for bit
    # the run finished: clients dropped their checkpointed state
    assert not (state_dir / run_id).exists()
    # and a finished run cannot be resumed again
    again = subprocess.run(_fedpers("--resume", run_id, *common), capture_output=True,
                           text=True, timeout=300, env=env)
    assert again.returncode == 2 and "nothing to resume" in again.stderr
