"""Bad input gets one clear line naming the file or key, exit status 2, before any work.

Covers the ``fedpers detect`` CSV header rule and its crafted model files, npz data
checks (labels, non-finite and complex features, unreadable archives), finite float
keys, unreadable config files, and the component checks that run before Ray starts
and before an MLflow run exists (``fedpers.preflight``).
"""

from __future__ import annotations

import gzip
import json
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpers.cli import main
from fedpers.config import ConfigError, RunConfig, parse_run_config
from fedpers.config_files import load_config_file
from fedpers.data import TASKS, DataError, DataSpec, load_federated
from fedpers.data.npz import MAX_CLASSES, read_client
from fedpers.detect_files import DetectError, read_input, read_meta, read_weights
from fedpers.preflight import check_run

FLOAT_KEYS = sorted(f.metadata["key"] for f in RunConfig.__dataclass_fields__.values()
                    if f.type in ("float", float))


def _csv(tmp_path: Path, text: str, name: str = "rows.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------- detect: CSV input
def test_a_numeric_first_row_is_scored_not_taken_as_a_header(tmp_path):
    rows = "\n".join(",".join(str(i * 10 + j) for j in range(3)) for i in range(20))
    out = read_input(_csv(tmp_path, rows + "\n"))
    assert out.shape == (20, 3) and out[0].tolist() == [0.0, 1.0, 2.0]


def test_an_all_text_first_row_is_a_header_and_label_columns_are_dropped(tmp_path):
    out = read_input(_csv(tmp_path, "f1, Label ,f2\n1,0,2\n3,1,4\n"))
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])


def test_a_first_row_with_one_text_cell_is_an_error_naming_file_row_and_column(tmp_path):
    path = _csv(tmp_path, "1,x,3\n" + "4,5,6\n" * 19)
    with pytest.raises(DetectError, match=r"rows\.csv: row 1, column 2: 'x' is not a number"):
        read_input(path)
    # --header says it is a header: the 19 rows below it are scored
    assert read_input(path, header=True).shape == (19, 3)


def test_no_header_refuses_a_text_first_row(tmp_path):
    path = _csv(tmp_path, "a,b\n1,2\n")
    assert read_input(path).shape == (1, 2)
    with pytest.raises(DetectError, match=r"rows\.csv: row 1, column 1: 'a' is not a number"):
        read_input(path, header=False)


@pytest.mark.parametrize(("text", "pattern"), [
    ("1,2\n3,4,5\n", r"rows\.csv: row 2 has 3 columns but the first row has 2"),
    ("a,b\n1,2\n3\n", r"rows\.csv: row 3 has 1 columns but the first row has 2"),
    ("1,2\n3,oops\n", r"rows\.csv: row 2, column 2: 'oops' is not a number"),
    ("1,2\n3,nan\n", r"rows\.csv: row 2, column 2: 'nan' is not a finite number"),
    ("1,2\n\n3,inf\n", r"rows\.csv: row 3, column 2: 'inf' is not a finite number"),
    ("", r"rows\.csv is empty"),
    ("a,b\n", r"rows\.csv holds a header but no data rows"),
    ("label,anomaly\n1,0\n", r"rows\.csv: every column is a label column"),
])
def test_bad_csv_rows_name_the_file_and_row(tmp_path, text, pattern):
    with pytest.raises(DetectError, match=pattern):
        read_input(_csv(tmp_path, text))


def test_binary_csv_and_bad_npy_name_the_file(tmp_path):
    (tmp_path / "junk.csv").write_bytes(b"\x00\xff\xfe\x81" * 10)
    with pytest.raises(DetectError, match=r"junk\.csv is not a readable CSV"):
        read_input(tmp_path / "junk.csv")
    np.save(tmp_path / "c.npy", np.ones((2, 3), np.complex64))
    with pytest.raises(DetectError, match=r"c\.npy: the array must hold real numbers"):
        read_input(tmp_path / "c.npy")
    np.save(tmp_path / "n.npy", np.array([[1.0, 2.0], [np.nan, 1.0]]))
    with pytest.raises(DetectError, match=r"n\.npy: row 1 holds a NaN"):
        read_input(tmp_path / "n.npy")
    (tmp_path / "r.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DetectError, match=r"r\.npy is not a readable \.npy array"):
        read_input(tmp_path / "r.npy")


def test_rows_of_the_wrong_width_name_the_input_file(tmp_path, fake_store, capsys):
    fake_store["dir"] = _model_folder(tmp_path)
    rows = _csv(tmp_path, "1,2,3\n")
    assert main(["detect", "--run", "r1", "--input", str(rows)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{rows}: input rows have 3 values" in line and "expects 9" in line


def test_an_unwritable_output_names_the_file(tmp_path, fake_store, capsys):
    fake_store["dir"] = _model_folder(tmp_path)
    rows = _csv(tmp_path, ",".join(["1"] * 9) + "\n")
    target = tmp_path / "no" / "such" / "scores.csv"
    assert main(["detect", "--run", "r1", "--input", str(rows), "--output", str(target)]) == 2
    assert f"cannot write the scores to {str(target)!r}" in _one_error_line(
        capsys.readouterr().err)


# ------------------------------------------------------- detect: crafted model files
def _model_folder(tmp_path: Path, meta: dict | None = None, weights: bytes | None = None
                  ) -> Path:
    """A run's ``model/`` artifacts for task shuttle-ad (9 features)."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    good = {"kind": "anomaly", "task": "shuttle-ad", "threshold": 0.5, "input_shape": [9],
            "num_classes": 2}
    (folder / "model_meta.json").write_text(json.dumps(good if meta is None else meta))
    if weights is None:
        torch.manual_seed(0)
        torch.save(TASKS["shuttle-ad"].build_model((9,), 2).state_dict(),
                   folder / "global_model.pt")
    else:
        (folder / "global_model.pt").write_bytes(weights)
    return folder


@pytest.fixture
def fake_store(monkeypatch):
    """``Tracker.connect`` returns a store whose artifacts are a local folder."""
    from fedpers.tracking import Tracker

    holder: dict[str, Path] = {}
    calls: list[str] = []

    def download(run_id: str, path: str) -> str:
        calls.append(run_id)
        return str(holder["dir"])

    store = types.SimpleNamespace(download_artifacts=download, calls=calls)
    monkeypatch.setattr(Tracker, "connect", staticmethod(lambda uri="": store))
    holder["calls"] = calls
    return holder


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(("meta", "weights", "pattern"), [
    ({"kind": "anomaly", "task": "shuttle-ad", "threshold": 0.5, "num_classes": 2}, None,
     r"model_meta\.json: 'input_shape' must be a list of positive integers"),
    ({"kind": "anomaly", "task": "shuttle-ad", "threshold": "high", "input_shape": [9],
      "num_classes": 2}, None, r"model_meta\.json: 'threshold' must be a finite number"),
    ([1, 2], None, r"model_meta\.json must hold a JSON object"),
    ({"kind": "anomaly", "task": "shuttle-ad", "threshold": 0.5, "input_shape": [10**9],
      "num_classes": 2}, None, r"the saved weights do not fit the model"),
    (None, pickle.dumps(_Evil()), r"global_model\.pt is not a readable model weights file"),
    (None, b"PK\x03\x04 truncated", r"global_model\.pt is not a readable model weights"),
])
def test_crafted_model_files_give_one_line_naming_the_file(tmp_path, fake_store, capsys,
                                                           meta, weights, pattern):
    fake_store["dir"] = _model_folder(tmp_path, meta, weights)
    rows = _csv(tmp_path, "1,2,3,4,5,6,7,8,9\n")
    assert main(["detect", "--run", "r1", "--input", str(rows)]) == 2
    out = capsys.readouterr()
    line = _one_error_line(out.err)
    assert "pwned" not in out.out
    import re

    assert re.search(pattern, line), line


def test_meta_that_is_not_json_names_the_file(tmp_path):
    (tmp_path / "model_meta.json").write_bytes(b"{\x00\xff")
    with pytest.raises(DetectError, match=r"'s model_meta\.json is not readable JSON"):
        read_meta(tmp_path / "model_meta.json", "run 'x''s model_meta.json")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(DetectError, match=r"list\.pt does not hold a state dict"):
        read_weights(tmp_path / "list.pt")


def test_detect_reads_the_input_before_the_run(tmp_path, fake_store, capsys):
    """A bad input file fails before the MLflow store is read (no store configured)."""
    rows = _csv(tmp_path, "1,x\n")
    assert main(["detect", "--run", "missing", "--input", str(rows)]) == 2
    assert "row 1, column 2" in _one_error_line(capsys.readouterr().err)
    assert fake_store["calls"] == []  # the run's artifacts were never fetched


def test_detect_scores_every_row_with_a_good_model(tmp_path, fake_store, capsys):
    fake_store["dir"] = _model_folder(tmp_path)
    rows = _csv(tmp_path, "\n".join(",".join(["1"] * 9) for _ in range(20)) + "\n")
    out_csv = tmp_path / "scores.csv"
    assert main(["detect", "--run", "r1", "--input", str(rows), "--output", str(out_csv)]) == 0
    assert "20 rows scored" in capsys.readouterr().out
    assert len(out_csv.read_text().splitlines()) == 21  # header + one line per input row


# ------------------------------------------------------------- main: exit status
def test_user_errors_are_one_line_and_tracebacks_need_verbose(tmp_path, capsys):
    rows = _csv(tmp_path, "1,x\n")
    assert main(["detect", "--run", "r", "--input", str(rows), "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_an_unexpected_exception_is_a_bug_with_a_traceback_and_status_1(monkeypatch, capsys,
                                                                        tmp_path):
    def boom(path, header=None):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("fedpers.detect_files.read_input", boom)
    assert main(["detect", "--run", "r", "--input", str(tmp_path / "x.csv")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "unexpected ZeroDivisionError" in err


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_key_refuses_nan_and_inf(key, value):
    with pytest.raises(ConfigError, match=f"run-config key '{key}' = .*must be a finite "
                                          f"number"):
        parse_run_config({key: value}, check_names=False)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        parse_run_config({key: float(value)}, check_names=False)


def test_float_keys_are_found():
    assert {"lr", "alpha", "round-timeout", "dp-delta"} <= set(FLOAT_KEYS)


def test_lr_inf_fails_at_once_from_the_cli(capsys):
    assert main(["run", "--set", "task=digits", "lr=inf"]) == 2
    assert "'lr' = inf: must be a finite number" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(("content", "pattern"), [
    (b"\x9a\xff\x00lr = 1", r"bad\.toml' is not a UTF-8 text file"),
    (b"lr = = 1", r"bad\.toml' is not valid TOML"),
    (b"[tool.flwr.app]\nconfig = 5\n", r"bad\.toml': \[tool\.flwr\.app\.config\] must be a "
                                       r"table"),
])
def test_unreadable_config_files_name_the_file(tmp_path, content, pattern):
    (tmp_path / "bad.toml").write_bytes(content)
    with pytest.raises(ConfigError, match=pattern):
        load_config_file(tmp_path / "bad.toml")


def test_a_non_table_tool_key_is_an_unknown_key_not_a_crash(tmp_path):
    (tmp_path / "c.toml").write_text("tool = 3\n")
    with pytest.raises(ConfigError, match="unknown run-config key"):
        parse_run_config(load_config_file(tmp_path / "c.toml"))


def test_min_train_clients_above_the_round_size_is_refused():
    with pytest.raises(ConfigError, match="'min-train-clients' = 4 exceeds the 3 clients"):
        parse_run_config({"num-clients": 3, "min-train-clients": 4}, check_names=False)
    parse_run_config({"num-clients": 3, "min-train-clients": 3}, check_names=False)


# ------------------------------------------------------------------ npz data
GOOD = {"x_train": np.zeros((4, 3), np.float32), "y_train": np.array([0, 1, 0, 1]),
        "x_test": np.zeros((2, 3), np.float32), "y_test": np.array([1, 0])}


def _npz(folder: Path, name: str = "a.npz", **arrays) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / name, **{**GOOD, **arrays})
    return folder / name


@pytest.mark.parametrize(("arrays", "pattern"), [
    ({"y_train": np.array([0, 1, 10**6, 1])},
     r"a\.npz: y_train holds label 1000000 \(row 2\); labels must be class indices 0\.\.C-1 "
     r"with at most 10,000 classes"),
    ({"y_test": np.array([0, MAX_CLASSES])}, r"y_test holds label 10000 \(row 1\)"),
    ({"y_train": np.array([0, 1, 2**63 + 5, 1], np.uint64)}, r"y_train holds label 922"),
    ({"y_train": np.array([0, 1, 1e20, 1])}, r"y_train holds label 1e\+20"),
    ({"y_train": np.array([0, 1, np.nan, 1])}, r"y_train must hold integer class labels; "
                                               r"row 2"),
    ({"y_train": np.array([0, 1j, 0, 1])}, r"y_train must hold integer class labels, got "
                                           r"dtype complex"),
    ({"x_train": np.array([[0, 0, 0], [0, np.nan, 0], [0, 0, 0], [0, 0, 0]])},
     r"a\.npz: x_train holds values that are not finite numbers .* first in row 1"),
    ({"x_test": np.array([[0, 0, 0], [np.inf, 0, 0]])}, r"x_test holds values that are not "
                                                         r"finite .* row 1"),
    ({"x_train": np.full((4, 3), 1e300)}, r"x_train holds values that are not finite"),
    ({"x_train": np.ones((4, 3), np.complex128)}, r"a\.npz: x_train holds complex numbers"),
    ({"x_train": np.array([["a"] * 3] * 4)}, r"x_train must be numeric, got dtype <U1"),
    ({"x_train": np.zeros((4, 0)), "x_test": np.zeros((2, 0))}, r"x_train rows have no "
                                                                 r"features"),
])
def test_npz_values_no_model_can_use_are_refused_naming_file_and_array(tmp_path, arrays,
                                                                       pattern):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=pattern) as info:
        read_client(path)
    assert str(path) in str(info.value)


def test_npz_object_arrays_are_refused_naming_the_file(tmp_path):
    path = _npz(tmp_path, x_train=np.array([[{"a": 1}]] * 4, dtype=object))
    with pytest.raises(DataError, match=r"a\.npz is not a readable \.npz file"):
        read_client(path)


@pytest.mark.parametrize("damage", ["truncate", "random", "npy"])
def test_unreadable_npz_files_name_the_file(tmp_path, damage):
    path = _npz(tmp_path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(500))
    else:
        np.save(tmp_path / "x.npy", np.zeros(3))
        path.write_bytes((tmp_path / "x.npy").read_bytes())
    with pytest.raises(DataError, match=r"a\.npz is not a (readable )?\.npz"):
        read_client(path)


def test_bool_and_integer_features_and_float_labels_still_load(tmp_path):
    path = _npz(tmp_path, x_train=np.ones((4, 3), bool), x_test=np.ones((2, 3), np.int16),
                y_train=np.array([0.0, 1.0, 2.0, 1.0]))
    data = read_client(path)
    assert data["x_train"].dtype == np.float32 and data["y_train"].tolist() == [0, 1, 2, 1]


def _npz_spec(folder: Path, num_clients: int = 1) -> DataSpec:
    return DataSpec(task="npz", num_clients=num_clients, partition="natural", alpha=0.5,
                    classes_per_client=2, local_test_fraction=0.2, max_samples_per_client=0,
                    seed=0, data_dir=str(folder))


@pytest.mark.parametrize("content", [b"hello", gzip.compress(bytes(200))[:15]])
def test_unreadable_fmnist_files_name_the_file(tmp_path, content):
    from fedpers.data.fmnist import read_idx

    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(content)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is not a readable "
                                        r"gzipped IDX file"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")


def test_load_federated_raises_data_error_for_every_load_problem(tmp_path):
    with pytest.raises(DataError, match="is not an existing folder"):
        load_federated(_npz_spec(tmp_path / "nope"))
    _npz(tmp_path / "d")
    with pytest.raises(DataError, match="'num-clients' = 2 but data-dir"):
        load_federated(_npz_spec(tmp_path / "d", 2))


def test_unused_classes_are_warned_about(tmp_path, caplog):
    _npz(tmp_path / "w", y_train=np.array([0, 900, 0, 900]))
    with caplog.at_level("WARNING", logger="fedpers.data.npz"):
        fed = TASKS["npz"].load(_npz_spec(tmp_path / "w"))
    assert fed.num_classes == 901
    assert "only 3 of those classes occur" in caplog.text  # 0, 1 (in y_test) and 900


def test_a_bad_npz_fails_the_cli_with_one_line_before_any_run(tmp_path, tracking_uri,
                                                             capsys):
    _npz(tmp_path / "d", y_train=np.array([0, 1, 10**6, 1]))
    assert main(["run", "--set", "task=npz", f"data-dir={tmp_path / 'd'}", "num-clients=1",
                 "--tracking-uri", tracking_uri]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(tmp_path / "d" / "a.npz") in line and "label 1000000" in line
    assert not (tmp_path / "mlflow.db").exists()


# ------------------------------------------------------------------ preflight
def _fed(shape=(64,), classes=10):
    return types.SimpleNamespace(input_shape=shape, num_classes=classes)


def test_fedbn_without_norm_layers_fails_before_ray_and_before_any_mlflow_run(
        tmp_path, tracking_uri, capsys):
    assert main(["run", "--set", "task=digits", "num-clients=3", "personalization=fedbn",
                 "--tracking-uri", tracking_uri]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "'personalization' = 'fedbn' with task 'digits'" in line
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run (not even the store) made


def test_fedbn_passes_on_a_model_with_norm_layers():
    check_run(parse_run_config({"task": "fmnist-bn", "personalization": "fedbn"}),
              _fed((1, 28, 28), 10))


class _Headless(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(64, 10)


@pytest.mark.parametrize("name", ["fedper", "fedrep"])
def test_head_personalisers_need_a_head(monkeypatch, name):
    task = types.SimpleNamespace(build_model=lambda shape, classes: _Headless(),
                                 kind="classification", name="digits")
    monkeypatch.setitem(TASKS, "digits", task)
    with pytest.raises(ConfigError, match=f"'personalization' = '{name}' keeps the model's "
                                          f"head private.*declares no head"):
        check_run(parse_run_config({"task": "digits", "personalization": name}), _fed())


def test_a_bad_device_trace_fails_the_preflight_naming_the_key(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("partition-id,compute-sps\n0,abc\n")
    cfg = parse_run_config({"task": "digits", "num-clients": 2, "device-profile": "trace",
                            "device-trace": str(trace)})
    with pytest.raises(ConfigError, match=r"run-config key 'device-trace' = .*trace\.csv"):
        check_run(cfg, _fed())


def test_a_codec_that_cannot_encode_the_model_fails_the_preflight(monkeypatch):
    from fedpers.codecs import CodecError

    def refuse(*args, **kwargs):
        raise CodecError("tensor too large for the codec header")

    monkeypatch.setattr("fedpers.codecs.update.encode_update", refuse)
    with pytest.raises(ConfigError, match="'codec' = 'q8' cannot encode task 'digits'"):
        check_run(parse_run_config({"task": "digits", "codec": "q8"}), _fed())


def test_preflight_keeps_torch_rng_and_warns_about_a_large_model(monkeypatch, caplog):
    monkeypatch.setattr("fedpers.preflight.LARGE_MODEL_BYTES", 1000)
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    with caplog.at_level("WARNING", logger="fedpers.preflight"):
        check_run(parse_run_config({"task": "digits"}), _fed())
    assert torch.equal(torch.rand(2), expected)
    assert "the model holds 0.0" in caplog.text and "MB" in caplog.text
