"""``fedpers detect --client``, end to end: a shuttle-ad run through the Simulation Engine
(3 devices, 2 rounds, fine-tuning) whose clients keep their detectors under
``client-model-dir``; then one device's own rows, held out of training, are scored
with its own detector and checked against a recomputation from the global model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpers.cli import main
from fedpers.config import parse_run_config
from fedpers.data import TASKS, DataSpec, load_federated
from fedpers.data.shuttle_ad import COLUMNS, TARGET, load_raw, preprocess_rows
from fedpers.seeds import Stream, derive_seed
from fedpers.simulation import run_simulation
from fedpers.training import train_local

pytestmark = pytest.mark.slow

# the device scored: at seed 42 some of its held-out rows fall between its own threshold
# and the server's, so the test can tell which one was used (client 1 had none after
# the seed derivation changed)
CLIENT = 0


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detect-client")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = parse_run_config({"task": "shuttle-ad", "num-clients": 3, "num-server-rounds": 2,
                            "partition": "iid", "max-samples-per-client": 600,
                            "personalization": "finetune", "finetune-epochs": 2,
                            "tracking-uri": uri, "client-model-dir": str(tmp / "devices")})
    return cfg, uri, run_simulation(cfg)


def _raw_rows(x: np.ndarray) -> np.ndarray:
    """The raw shuttle rows whose preprocessed form is ``x`` (a client's test part)."""
    raw, _ = load_raw()
    pre = preprocess_rows(raw)
    index = {row.tobytes(): i for i, row in enumerate(pre)}
    return raw[[index[row.tobytes()] for row in x]]


def _scores(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        rec = model.eval()(torch.from_numpy(x)).numpy()
    return ((rec.astype(np.float64) - x) ** 2).mean(axis=1)


def _artifact(uri: str, run_id: str, path: str) -> Path:
    from mlflow.tracking import MlflowClient

    return Path(MlflowClient(tracking_uri=uri).download_artifacts(run_id, path))


def test_detect_client_scores_with_the_devices_own_model_and_threshold(finetune_run,
                                                                        tmp_path, capsys):
    cfg, uri, run_id = finetune_run
    data = load_federated(DataSpec.from_config(cfg)).clients[CLIENT]
    rows = tmp_path / "rows.csv"
    with open(rows, "w", newline="") as fh:  # the device's held-out rows, with their label
        writer = csv.writer(fh)
        writer.writerow([*COLUMNS, TARGET])
        for raw, label in zip(_raw_rows(data.x_test), data.y_test, strict=True):
            writer.writerow([*(f"{v:.17g}" for v in raw), int(label)])
    out = tmp_path / "scores.csv"
    assert main(["detect", "--run", run_id, "--client", str(CLIENT), "--input", str(rows),
                 "--output", str(out), "--tracking-uri", uri]) == 0
    assert f"client {CLIENT}'s own model (finetune, round 2)" in capsys.readouterr().out
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    scores = np.array([float(r["score"]) for r in table])
    flags = np.array([int(r["anomaly"]) for r in table])

    # Recomputed here: the client's last evaluation fine-tunes the final global model
    # (the run's artifact) on its own normal rows, seeded by (seed, round 2, client).
    task = TASKS["shuttle-ad"]
    global_model = task.build_model((9,), 2)
    global_model.load_state_dict(torch.load(_artifact(uri, run_id, "model/global_model.pt"),
                                            weights_only=True))
    tuned = task.build_model((9,), 2)
    tuned.load_state_dict(global_model.state_dict())
    seed = derive_seed(derive_seed(cfg.seed, Stream.CLIENT_TRAIN, cfg.num_server_rounds, CLIENT),
                       Stream.FINETUNE)
    train_local(tuned, data.x_train, data.y_train, kind="anomaly", epochs=cfg.finetune_epochs,
                batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum, seed=seed,
                device=torch.device("cpu"))
    expected = _scores(tuned, data.x_test)
    assert np.allclose(scores, expected, rtol=1e-5, atol=1e-9)
    assert not np.allclose(scores, _scores(global_model, data.x_test), rtol=1e-3)

    # the device's own threshold: the percentile of its model's errors on its own normal
    # validation rows, as it reported in the last round; not the server's one threshold
    own = float(np.percentile(_scores(tuned, data.x_val), cfg.threshold_percentile))
    with open(_artifact(uri, run_id, "client_metrics.csv"), newline="") as fh:
        reported = {int(r["partition-id"]): float(r["threshold"]) for r in csv.DictReader(fh)}
    assert own == pytest.approx(reported[CLIENT], rel=1e-5)
    global_threshold = json.loads(_artifact(uri, run_id, "model/model_meta.json")
                                  .read_text())["threshold"]
    assert abs(own - global_threshold) > 1e-3 * global_threshold
    assert np.array_equal(flags, (expected > own).astype(int))
    between = (expected > min(own, global_threshold)) & (expected <= max(own, global_threshold))
    assert between.any(), "no row tells the two thresholds apart; pick another seed"


def test_detect_client_refuses_unknown_ids_naming_the_valid_ones(finetune_run, tmp_path,
                                                                 capsys):
    _, uri, run_id = finetune_run
    rows = tmp_path / "rows.npy"
    np.save(rows, load_raw()[0][:5])
    assert main(["detect", "--run", run_id, "--client", "3", "--input", str(rows),
                 "--tracking-uri", uri]) == 2
    assert "no detector of client 3" in (err := capsys.readouterr().err)
    assert "valid client ids: 0, 1, 2" in err
