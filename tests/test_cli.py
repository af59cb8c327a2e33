"""The `fedpers` command line: bad input fails fast, before any work, naming the key."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fedpers.cli import main


def test_unknown_key_fails_before_work(capsys, tracking_uri):
    assert main(["run", "--set", "num-clinets=3", "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err
    assert "unknown run-config key(s) 'num-clinets'" in err and "valid keys" in err


def test_unknown_strategy_lists_valid_names(capsys, tracking_uri):
    assert main(["run", "--set", "strategy=fedfoo", "--tracking-uri", tracking_uri]) == 2
    assert "valid names: fedadam, fedavg" in capsys.readouterr().err


def test_missing_config_file(capsys, tmp_path):
    assert main(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unreachable_tracking_store_fails_fast():
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "fedpers.cli", "run", "--set", "task=digits",
                          "--tracking-uri", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "cannot reach the MLflow store at http://127.0.0.1:9" in out.stderr
    assert time.monotonic() - start < 60


def test_store_in_missing_folder_fails(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}"
    assert main(["run", "--set", "task=digits", "--tracking-uri", uri]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_keys_lists_every_key(capsys):
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    for key in ("num-clients", "strategy", "tracking-uri"):
        assert key in out


@pytest.mark.parametrize("argv", [["detect", "--run", "x"], ["run", "--set"]])
def test_argparse_errors_exit_nonzero(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_missing_data_fails_before_any_run_is_recorded(capsys, tmp_path, tracking_uri):
    assert main(["run", "--set", "task=fmnist", f"data-dir={tmp_path}",
                 "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and "data-dir" in err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exps = client.search_experiments()
    assert not client.search_runs([e.experiment_id for e in exps])
