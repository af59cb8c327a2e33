"""A device's own detector (``client-model-dir``, ``fedpers detect --client``): what a
client writes after its evaluation, reading it back, and the errors. In process, no Ray;
the run through Flower is ``tests/test_detect_client_e2e.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from clients import PERSONALIZERS
from fedpers import client_detector as cd
from fedpers.cli import main
from fedpers.client_app import client_config, evaluate_local, train
from fedpers.config import ConfigError, parse_run_config
from fedpers.data import TASKS, DataSpec, load_federated
from fedpers.detect import Detector
from fedpers.detect_files import DetectError
from fedpers.training import anomaly_scores
from strategies import STRATEGIES, StrategyParams

CFG = {"task": "shuttle-ad", "num-clients": 3, "partition": "iid",
       "max-samples-per-client": 300, "batch-size": 32, "personalization": "finetune",
       "mlflow-run-id": "run1"}
RUN = "run1"
W = "body.0.0.weight"  # a weight of the shuttle-ad autoencoder


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TASKS["shuttle-ad"].build_model((9,), 2)


def _meta(pid: int, run: str = RUN, threshold: float = 0.5) -> dict:
    return {"task": "shuttle-ad", "kind": "anomaly", "input_shape": [9], "num_classes": 2,
            "threshold": threshold, "partition_id": pid, "mlflow_run_id": run,
            "personalization": "finetune", "server_round": 2}


def _save(root: Path, pid: int, seed: int = 0, run: str = RUN, **meta) -> Path:
    folder = cd.client_folder(root, run, pid)
    return cd.save_detector(folder, _model(seed).state_dict(), {**_meta(pid, run), **meta})


# ------------------------------------------------------------------ the files
def test_save_and_load_round_trip(tmp_path):
    model = _model(3)
    folder = cd.save_detector(tmp_path / "c", model.state_dict(), _meta(1, threshold=0.25))
    meta, state = cd.load_detector(folder)
    assert {k: meta[k] for k in _meta(1)} == _meta(1, threshold=0.25)
    assert meta["format"] == cd.FORMAT and len(meta["model_sha256"]) == 64
    assert state.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    # written again: replaced, not added to
    cd.save_detector(folder, _model(4).state_dict(), _meta(1, threshold=0.75))
    meta2, state2 = cd.load_detector(folder)
    assert meta2["threshold"] == 0.75 and sorted(p.name for p in folder.iterdir()) == \
        [cd.META_FILE, cd.MODEL_FILE]
    assert not torch.equal(state2[W], state[W])


def test_a_model_file_of_another_write_is_refused(tmp_path):
    a, b = _save(tmp_path, 0, seed=0), _save(tmp_path, 1, seed=1)
    shutil.copy(b / cd.MODEL_FILE, a / cd.MODEL_FILE)  # as if the meta's write never came
    with pytest.raises(cd.ClientDetectorError, match="SHA-256"):
        cd.load_detector(a)
    with pytest.raises(cd.ClientDetectorError, match="does not exist"):
        cd.load_detector(tmp_path / "nowhere")


def test_saved_clients_and_run_keys(tmp_path):
    _save(tmp_path, 2)
    _save(tmp_path, 0)
    (tmp_path / RUN / "client-5").mkdir()  # no detector.json: not a saved client
    assert cd.saved_clients(tmp_path / RUN) == [0, 2]
    assert cd.run_key("abc", 7) == "abc" and cd.run_key("", 7) == "flwr-run-7"
    with pytest.raises(cd.ClientDetectorError, match="invalid run id"):
        cd.client_folder(tmp_path, "../etc", 0)


# ------------------------------------------------------------------ the client half
def _context(run_cfg: dict, node_config: dict | None = None, pid: int = 1) -> Context:
    return Context(run_id=9, node_id=5, state=RecordDict(), run_config=run_cfg,
                   node_config={"partition-id": pid, "num-partitions": 3,
                                **(node_config or {})})


def _evaluate(ctx: Context, arrays: dict[str, np.ndarray], rnd: int = 2) -> dict:
    msg = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                              "config": ConfigRecord({"server-round": rnd})}),
                  message_type=MessageType.EVALUATE, dst_node_id=5)
    return dict(evaluate_local(msg, ctx).content["metrics"])


@pytest.mark.usefixtures("task_identity")
def test_evaluation_keeps_the_model_and_threshold_it_used(tmp_path):
    run_cfg = parse_run_config({**CFG, "client-model-dir": str(tmp_path)}).to_dict()
    ctx = _context(run_cfg)
    arrays = {k: v.numpy().copy() for k, v in _model(0).state_dict().items()}
    reply = _evaluate(ctx, arrays)
    det = Detector.from_run(RUN, client=1, model_dir=str(tmp_path))
    assert det.threshold == reply["threshold"]
    assert "client 1's own model (finetune, round 2)" == det.source
    # the fine-tuned copy the client evaluated (its mean error is the reply's loss),
    # not the global model it was sent
    data = load_federated(DataSpec.from_config(client_config(ctx))).clients[1]
    scores = anomaly_scores(det.model, data.x_test, torch.device("cpu"))
    assert scores.mean() == pytest.approx(reply["loss"], rel=1e-6)
    sent = _model(0)
    assert not np.allclose(anomaly_scores(sent, data.x_test, torch.device("cpu")), scores)
    meta, _ = cd.load_detector(tmp_path / RUN / "client-1")
    assert (meta["num_val"], meta["run_key"]) == (reply["num-val"], RUN)


class _OneNode:
    def get_node_ids(self) -> list[int]:
        return [5]


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("name", sorted(set(PERSONALIZERS) - {"fedbn"}))  # fedbn: no norm
def test_every_personaliser_keeps_the_model_it_evaluates_with(name, tmp_path):
    """After a round of training (which fills each method's private state) the saved
    detector is the personaliser's ``eval_model``: its mean error on the client's test
    part is the loss the client reported, and its threshold the one it reported."""
    run_cfg = parse_run_config({**CFG, "personalization": name,
                                "client-model-dir": str(tmp_path)}).to_dict()
    ctx = _context(run_cfg)
    cfg = client_config(ctx)
    arrays = {k: v.numpy().copy() for k, v in _model(0).state_dict().items()}
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    strategy = STRATEGIES[cfg.strategy].build(StrategyParams.from_config(cfg))
    (msg,) = strategy.configure_train(1, record, ConfigRecord(), _OneNode())
    train(msg, ctx)
    reply = _evaluate(ctx, arrays, rnd=1)
    det = Detector.from_run(RUN, client=1, model_dir=str(tmp_path))
    data = load_federated(DataSpec.from_config(cfg)).clients[1]
    scores = anomaly_scores(det.model, data.x_test, torch.device("cpu"))
    assert scores.mean() == pytest.approx(reply["loss"], rel=1e-6)
    assert det.threshold == reply["threshold"]
    # every method but "none" evaluates (and so keeps) weights other than those it was sent
    sent = np.concatenate([v.ravel() for v in arrays.values()])
    kept = np.concatenate([v.numpy().ravel() for v in det.model.state_dict().values()])
    assert np.allclose(kept, sent) == (name == "none")


@pytest.mark.usefixtures("task_identity")
def test_a_node_config_folder_wins_and_off_writes_nothing(tmp_path, monkeypatch):
    arrays = {k: v.numpy().copy() for k, v in _model(0).state_dict().items()}
    run_cfg = parse_run_config({**CFG, "client-model-dir": str(tmp_path / "run"),
                                "mlflow-run-id": ""}).to_dict()
    _evaluate(_context(run_cfg, {cd.MODEL_DIR_KEY: str(tmp_path / "node")}, pid=0), arrays)
    assert cd.saved_clients(tmp_path / "node" / "flwr-run-9") == [0]  # no MLflow run id
    assert not (tmp_path / "run").exists()
    calls = []
    monkeypatch.setattr(cd, "save_detector", lambda *a: calls.append(a))
    off = parse_run_config({**CFG}).to_dict()
    _evaluate(_context(off, pid=0), arrays)
    assert calls == []


def test_the_key_needs_an_absolute_folder_and_an_anomaly_task():
    with pytest.raises(ConfigError, match="'client-model-dir'.*absolute"):
        parse_run_config({**CFG, "client-model-dir": "models"})
    with pytest.raises(ConfigError, match="'client-model-dir'.*'digits' is not an anomaly"):
        parse_run_config({"task": "digits", "client-model-dir": "/tmp/models"})
    assert parse_run_config({**CFG, "client-model-dir": "~/models"}).client_model_dir


# ------------------------------------------------------------------ detect --model-dir
def test_model_dir_may_be_the_client_run_or_root_folder(tmp_path):
    _save(tmp_path, 0, seed=0, threshold=0.1)
    _save(tmp_path, 2, seed=2, threshold=0.3)
    for given in (tmp_path, tmp_path / RUN, tmp_path / RUN / "client-2"):
        det = Detector.from_run(RUN, client=2, model_dir=str(given))
        assert det.threshold == 0.3
        assert torch.equal(det.model.state_dict()[W], _model(2).state_dict()[W])


def test_unknown_client_ids_are_refused_naming_the_valid_ones(tmp_path, capsys):
    _save(tmp_path, 0)
    _save(tmp_path, 2)
    for given in (tmp_path, tmp_path / RUN):
        with pytest.raises(DetectError, match=r"no detector of client 7 .*valid client ids: 0, 2"):
            Detector.from_run(RUN, client=7, model_dir=str(given))
    rows = tmp_path / "rows.npy"
    np.save(rows, np.zeros((2, 9)))
    assert main(["detect", "--run", RUN, "--client", "1", "--model-dir", str(tmp_path),
                 "--input", str(rows)]) == 2
    assert "valid client ids: 0, 2" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    with pytest.raises(DetectError, match="no client of run 'other' kept a detector"):
        Detector.from_run("other", client=0, model_dir=str(tmp_path))


def test_a_folder_of_another_client_or_run_is_refused(tmp_path):
    folder = _save(tmp_path, 0)
    with pytest.raises(DetectError, match="detector of client 0, not of client 1"):
        Detector.from_run(RUN, client=1, model_dir=str(folder))
    with pytest.raises(DetectError, match="of run 'run1', not of run 'run2'"):
        Detector.from_run("run2", client=0, model_dir=str(folder))
    with pytest.raises(DetectError, match="give --client"):
        Detector.from_run(RUN, model_dir=str(folder))
    with pytest.raises(DetectError, match="not a folder"):
        Detector.from_run(RUN, client=0, model_dir=str(tmp_path / "missing"))


class FakeStore:
    """The MLflow client calls ``_logged_client_folder`` makes, over a dict of runs' params."""

    def __init__(self, params: dict[str, dict[str, str]]) -> None:
        self.params = params

    def get_run(self, run_id: str):
        from types import SimpleNamespace

        if run_id not in self.params:
            raise LookupError(f"Run '{run_id}' not found")
        return SimpleNamespace(data=SimpleNamespace(params=self.params[run_id]))


def test_the_run_names_the_folder(tmp_path, monkeypatch):
    from fedpers.tracking import Tracker

    store = FakeStore({"with": {"task": "shuttle-ad", cd.MODEL_DIR_KEY: str(tmp_path)},
                       "without": {"task": "shuttle-ad", cd.MODEL_DIR_KEY: ""},
                       "digits": {"task": "digits"}})
    monkeypatch.setattr(Tracker, "connect", classmethod(lambda cls, uri: store))
    _save(tmp_path, 1, seed=1, run="with", threshold=0.2)
    det = Detector.from_run("with", client=1)
    assert det.threshold == 0.2
    with pytest.raises(DetectError, match="valid client ids: 1$"):
        Detector.from_run("with", client=0)
    with pytest.raises(DetectError, match="ran without run-config key 'client-model-dir'"):
        Detector.from_run("without", client=1)
    with pytest.raises(DetectError, match="'digits', which is not an anomaly"):
        Detector.from_run("digits", client=1)
    with pytest.raises(DetectError, match="run 'gone' not found"):
        Detector.from_run("gone", client=1)


def _forge(folder: Path, meta_changes: dict | None = None, blob: bytes | None = None) -> None:
    """Rewrite a saved detector as an attacker would: new contents, matching checksum."""
    import hashlib
    import json

    if blob is not None:
        (folder / cd.MODEL_FILE).write_bytes(blob)
    meta = json.loads((folder / cd.META_FILE).read_text())
    meta.update(meta_changes or {})
    meta["model_sha256"] = hashlib.sha256((folder / cd.MODEL_FILE).read_bytes()).hexdigest()
    (folder / cd.META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("changes, message", [
    ({"input_shape": [10**9]}, "do not fit the model"),
    ({"input_shape": "nine"}, "'input_shape' must be a list of positive integers"),
    ({"num_classes": True}, "'num_classes' must be a positive integer"),
    ({"threshold": "high"}, "'threshold' must be a finite number"),
])
def test_a_crafted_client_detector_json_is_one_line_naming_the_file(tmp_path, changes, message):
    folder = _save(tmp_path, 1)
    _forge(folder, changes)
    with pytest.raises(DetectError, match=message) as err:
        Detector.from_client(RUN, 1, model_dir=str(folder))
    assert str(folder) in str(err.value)  # names the detector's files


@pytest.mark.parametrize("blob, message", [
    (b"\x80\x04\x95 not a torch file", "not a readable model weights file"),
    (None, "does not hold a state dict"),
])
def test_a_crafted_client_model_file_is_one_line_naming_the_file(tmp_path, blob, message):
    import io

    folder = _save(tmp_path, 1)
    if blob is None:  # a valid torch file that is not a state dict
        buf = io.BytesIO()
        torch.save([torch.zeros(2)], buf)
        blob = buf.getvalue()
    _forge(folder, blob=blob)
    with pytest.raises(DetectError, match=message) as err:
        Detector.from_client(RUN, 1, model_dir=str(folder))
    assert cd.MODEL_FILE in str(err.value)
