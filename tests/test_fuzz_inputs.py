"""Property-based: any npz data folder, detect CSV or TOML config either loads (and
then holds only what a model can use) or ends with exit status 2 and one line naming
the file or key; never a traceback, a silently dropped row or a hang.

The loaders and ``fedpers.cli.main`` are called in-process, with the federated run
itself stubbed out; a few real ``fedpers`` processes check the exit status and the
absence of a traceback end to end.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedpers.cli import main
from fedpers.config import config_keys
from fedpers.data import DataError, DataSpec, load_federated
from fedpers.data.npz import ARRAYS, MAX_CLASSES
from fedpers.detect_files import DetectError, read_input

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def _error_line(err: str) -> str:
    """The one ``error:`` line of a bad-input exit; fails on a traceback or more lines."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------------- npz
FEATURE_DTYPES = [np.float32, np.float64, np.float16, np.int8, np.int64, np.uint8, np.bool_,
                  np.complex64, np.dtype("U2"), np.dtype("M8[s]")]
LABEL_DTYPES = [np.int64, np.int32, np.uint64, np.uint8, np.float64, np.bool_, np.complex128,
                np.dtype("U2")]


@st.composite
def feature_array(draw, rows: int) -> np.ndarray:
    dtype = draw(st.sampled_from(FEATURE_DTYPES))
    tail = draw(st.lists(st.integers(0, 3), min_size=0, max_size=2))
    return draw(hnp.arrays(dtype, (rows, *tail)))


@st.composite
def label_array(draw, rows: int) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(LABEL_DTYPES)))
    shape = draw(st.sampled_from([(rows,), (rows,), (rows,), (max(rows - 1, 0),), (rows, 1)]))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        hi = draw(st.sampled_from([3, 12, MAX_CLASSES, int(info.max)]))
        elements = st.integers(max(int(info.min), -2), min(hi, int(info.max)))
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


@st.composite
def npz_content(draw) -> tuple[str, object]:
    """("arrays", dict) for np.savez, ("bytes", raw) or ("truncated", dict)."""
    kind = draw(st.sampled_from(["arrays"] * 6 + ["bytes", "truncated", "object"]))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=300))
    n_train, n_test = draw(st.integers(0, 6)), draw(st.integers(0, 4))
    arrays = {"x_train": draw(feature_array(n_train)), "y_train": draw(label_array(n_train)),
              "x_test": draw(feature_array(n_test)), "y_test": draw(label_array(n_test))}
    for name in draw(st.lists(st.sampled_from(ARRAYS), max_size=1)):
        del arrays[name]
    if kind == "object":
        arrays["x_train"] = np.array([[{"a": 1}]] * n_train + [[None]], dtype=object)
    return kind, arrays


def _write_npz(path: Path, kind: str, content) -> None:
    if kind == "bytes":
        path.write_bytes(content)
        return
    np.savez(path, **content)
    if kind == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])


def _npz_spec(folder: Path) -> DataSpec:
    return DataSpec(task="npz", num_clients=1, partition="natural", alpha=0.5,
                    classes_per_client=2, local_test_fraction=0.2, max_samples_per_client=0,
                    seed=0, data_dir=str(folder))


@SETTINGS
@given(npz_content())
def test_any_npz_file_loads_clean_data_or_names_itself(content):
    kind, payload = content
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "client.npz"
        _write_npz(path, kind, payload)
        try:
            fed = load_federated.__wrapped__(_npz_spec(Path(tmp)))  # uncached
        except DataError as exc:
            message = str(exc)
            assert str(path) in message or repr(tmp) in message, message
            return
    assert kind == "arrays"
    assert 1 <= fed.num_classes <= MAX_CLASSES
    for c in fed.clients:
        for x in (c.x_train, c.x_test):
            assert x.dtype == np.float32 and np.isfinite(x).all()
        for y in (c.y_train, c.y_test):
            assert y.dtype == np.int64 and (y >= 0).all() and (y < fed.num_classes).all()
        assert len(c.x_train) == len(c.y_train) > 0


# ---------------------------------------------------------------------- CSV
CELLS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(alphabet="abcxyz_ ", min_size=1, max_size=5),
    st.sampled_from(["", " ", "nan", "inf", "-Infinity", "1e400", "label", "anomaly", "0x1f",
                     "1_0", " 3 ", "1,5", '"', "\u00e9", "\x00"]),
)


@st.composite
def csv_text(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    width = draw(st.integers(1, 4))
    rows = draw(st.lists(st.lists(CELLS, min_size=width, max_size=width), max_size=6))
    for row in rows:  # now and then a ragged row
        if draw(st.integers(0, 7)) == 0:
            row.append("1")
    buf = io.StringIO()
    writer = csv.writer(buf)
    for row in rows:
        writer.writerow(row)
        if draw(st.integers(0, 9)) == 0:
            buf.write("\n")  # a blank line
    return buf.getvalue().encode()


def _numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@SETTINGS
@given(csv_text(), st.sampled_from([None, True, False]))
def test_any_csv_is_scored_row_for_row_or_refused_naming_the_file(raw, header):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.csv"
        path.write_bytes(raw)
        try:
            out = read_input(path, header=header)
        except DetectError as exc:
            assert str(path) in str(exc), str(exc)
            return
    rows = [r for r in csv.reader(io.StringIO(raw.decode(), newline="")) if r]
    dropped = header if header is not None else not any(_numeric(c) for c in rows[0])
    assert out.shape[0] == len(rows) - int(dropped)  # no row dropped or added silently
    assert out.shape[0] > 0 and out.dtype == np.float64 and np.isfinite(out).all()
    assert len({len(r) for r in rows}) == 1  # ragged files never load


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(csv_text())
def test_detect_cli_on_any_csv_exits_2_with_one_line_or_reaches_the_model(raw):
    """Input problems end the command before the run's model is fetched."""
    import fedpers.detect as detect

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.csv"
        path.write_bytes(raw)
        err = io.StringIO()
        reached = []

        def no_model(*args, **kwargs):
            reached.append(True)
            raise DetectError("stub: no model")

        saved, detect.Detector.from_run = detect.Detector.from_run, no_model
        old_err, sys.stderr = sys.stderr, err
        try:
            code = main(["detect", "--run", "r", "--input", str(path)])
        finally:
            sys.stderr = old_err
            detect.Detector.from_run = saved
    line = _error_line(err.getvalue())
    assert code == 2
    assert (str(path) in line) != bool(reached), line


# ---------------------------------------------------------------------- TOML
KEYS = sorted(config_keys())
SCALARS = st.one_of(
    st.integers(-2**63, 2**63 - 1), st.floats(), st.booleans(),
    st.text(max_size=8), st.sampled_from(["digits", "fedavg", "none", "q8", "iid", "0.1"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.text(max_size=3), SCALARS, max_size=2))


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


@st.composite
def toml_file(draw) -> bytes:
    mode = draw(st.sampled_from(["keys"] * 5 + ["flwr", "bytes", "garbled"]))
    if mode == "bytes":
        return draw(st.binary(max_size=200))
    keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=6))
    doc = draw(st.dictionaries(keys, VALUES, max_size=4))
    body = "".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in doc.items())
    if mode == "flwr":
        body = "[tool.flwr.app.config]\n" + body
    raw = body.encode()
    if mode == "garbled" and raw:
        cut = draw(st.integers(0, len(raw) - 1))
        raw = raw[:cut] + draw(st.binary(min_size=1, max_size=4)) + raw[cut + 1:]
    return raw


@pytest.fixture
def no_simulation(monkeypatch):
    """``fedpers run`` parses and resolves its config, then stops (no data, Ray, MLflow)."""
    monkeypatch.setattr("fedpers.simulation.run_simulation", lambda cfg, **kw: "stub-run")
    monkeypatch.setattr("fedpers.cli_commands.print_summary", lambda run_id, uri: None)


@SETTINGS
@given(toml_file())
def test_any_config_file_runs_or_exits_2_with_one_line(no_simulation, capsys, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_bytes(raw)
        code = main(["run", "--config", str(path), "--tracking-uri",
                     f"sqlite:///{tmp}/mlflow.db"])
    out = capsys.readouterr()
    if code == 0:
        assert "run id: stub-run" in out.out
        return
    assert code == 2, out.err
    assert str(path) in _error_line(out.err)


@SETTINGS
@given(st.sampled_from(KEYS), SCALARS)
def test_any_set_value_runs_or_exits_2_naming_the_key(no_simulation, capsys, key, value):
    code = main(["run", "--set", f"{key}={_toml(value)}", "--tracking-uri",
                 "sqlite:////nonexistent/never-opened.db"])
    out = capsys.readouterr()
    if code == 2:
        line = _error_line(out.err)
        assert key in line or "tracking" in line, line
    else:
        assert code == 0, out.err


# ---------------------------------------------------------------- real processes
def test_real_fedpers_processes_exit_2_with_one_line(tmp_path):
    """Four bad inputs through the installed ``fedpers`` command, side by side."""
    exe = Path(sys.executable).with_name("fedpers")
    (tmp_path / "garbage.toml").write_bytes(bytes(range(256)))
    (tmp_path / "mixed.csv").write_text("1,x,3\n" + "4,5,6\n" * 19)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "c.npz", x_train=np.zeros((4, 3)),
             y_train=np.array([0, 1, 10**6, 1]), x_test=np.zeros((2, 3)),
             y_test=np.array([0, 1]))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cases = {
        "lr=inf": (["run", "--set", "lr=inf", "--tracking-uri", uri], "'lr' = inf"),
        "toml": (["run", "--config", str(tmp_path / "garbage.toml")], "garbage.toml"),
        "csv": (["detect", "--run", "x", "--input", str(tmp_path / "mixed.csv"),
                 "--tracking-uri", uri], "mixed.csv: row 1, column 2"),
        "npz": (["run", "--set", "task=npz", f"data-dir={tmp_path / 'data'}",
                 "num-clients=1", "--tracking-uri", uri], "c.npz: y_train holds label 1000000"),
    }
    env = {"FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": str(exe.parent), "HOME": str(tmp_path)}
    procs = {name: subprocess.Popen([str(exe), *argv], cwd=tmp_path, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (argv, _) in cases.items()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err)
        assert cases[name][1] in _error_line(err), (name, err)
    assert not (tmp_path / "mlflow.db").exists()  # no run was recorded
