"""Running a golden run in-process and reading its final metrics back from MLflow.

Shared by ``record.py`` (which writes ``golden.json``) and ``test_golden.py`` (which
replays the runs and compares).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.golden.runs import NONDETERMINISTIC, RESUMED, RUNS, materialise

logger = logging.getLogger(__name__)

GOLDEN = Path(__file__).with_name("golden.json")
#: packages whose version the golden numbers depend on: a replay under other versions
#: is skipped (kernels, RNG streams and serialisation may change the numbers)
PINNED = ("torch", "flwr", "numpy")
BYTE_KEYS = ("comm/bytes_up_total", "comm/bytes_down_total")
EXPERIMENT = "golden"


def versions() -> dict[str, str]:
    """The installed versions of :data:`PINNED` (and, for the record, mlflow)."""
    return {name: importlib.metadata.version(name) for name in (*PINNED, "mlflow")}


def final_metrics(uri: str, run_id: str) -> dict[str, float]:
    """Every metric the run logged: its value at the highest step (the newest logged at
    that step, should a step hold more than one)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    out = {}
    for key in sorted(client.get_run(run_id).data.metrics):
        history = client.get_metric_history(run_id, key)
        last = max(history, key=lambda m: (m.step, m.timestamp))
        out[key] = float(last.value)
    return out


@contextlib.contextmanager
def _stop_after_checkpoint(round_: int) -> Iterator[None]:
    """Ask the run to stop (what Ctrl-C does, ``fedpers.interrupt``) as soon as the
    checkpoint of round ``round_`` is stored; the next round is not started."""
    from fedpers import interrupt
    from fedpers.checkpoint import CheckpointStore

    original = CheckpointStore.save

    def save_then_stop(self: CheckpointStore, ckpt: Any) -> None:
        original(self, ckpt)
        if ckpt.round == round_:
            interrupt.request_stop(signal.SIGINT)

    CheckpointStore.save = save_then_stop  # type: ignore[method-assign]
    try:
        yield
    finally:
        CheckpointStore.save = original  # type: ignore[method-assign]


def run(name: str, workdir: Path, *, interrupted: bool | None = None) -> dict[str, float]:
    """Run golden run ``name`` in-process; return its final metrics.

    ``workdir`` holds the MLflow store and the files the run reads. ``interrupted``
    (default: whether ``name`` is in :data:`RESUMED`): stop the run after the
    checkpoint of round ``RESUMED[name]`` and resume it to the end.
    """
    from fedpers.checkpoint import resume_config
    from fedpers.config import parse_run_config
    from fedpers.interrupt import RunInterrupted
    from fedpers.simulation import run_simulation

    if interrupted is None:
        interrupted = name in RESUMED
    folder = workdir / name / ("interrupted" if interrupted else "straight")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    raw = {**materialise(RUNS[name], folder / "files"), "tracking-uri": uri,
           "experiment": EXPERIMENT}
    cfg = parse_run_config(raw)
    if not interrupted:
        return final_metrics(uri, run_simulation(cfg, run_name=name))
    after = RESUMED[name]
    with _stop_after_checkpoint(after):
        try:
            run_simulation(cfg, run_name=name)
        except RunInterrupted as exc:
            run_id = exc.run_id
            if exc.checkpoint_round != after:
                raise AssertionError(f"golden run {name!r}: stopped with the checkpoint of "
                                     f"round {exc.checkpoint_round}, expected {after}") from exc
        else:
            raise AssertionError(f"golden run {name!r} was not interrupted after round {after}")
    resumed = run_simulation(resume_config(uri, run_id), run_name=name)
    if resumed != run_id:
        raise AssertionError(f"golden run {name!r}: the resumed run logged into {resumed}, "
                             f"not {run_id}")
    return final_metrics(uri, run_id)


def to_record(metrics: Mapping[str, float]) -> dict[str, Any]:
    """What ``golden.json`` keeps of one run: every final metric as ``repr`` of its
    float (full precision, NaN and -0.0 included) and the byte totals."""
    return {"metrics": {k: repr(float(v)) for k, v in sorted(metrics.items())},
            "bytes": {k: repr(float(metrics[k])) for k in BYTE_KEYS if k in metrics}}


def differences(golden: Mapping[str, str], now: Mapping[str, float],
                ignore: frozenset[str] = NONDETERMINISTIC) -> list[str]:
    """One line per key whose value differs (``repr`` equality: bit for bit), is new or
    is gone: ``key: golden G, now N``. Keys in ``ignore`` are not compared."""
    lines = []
    for key in sorted(set(golden) | set(now)):
        if key in ignore:
            continue
        want = golden.get(key, "<absent>")
        got = repr(float(now[key])) if key in now else "<absent>"
        if want != got:
            lines.append(f"{key}: golden {want}, now {got}{_delta(want, got)}")
    return lines


def _delta(want: str, got: str) -> str:
    try:
        a, b = float(want), float(got)
    except ValueError:
        return ""
    if math.isfinite(a) and math.isfinite(b):
        return f" (diff {b - a:+.3g})"
    return ""


def load_golden(path: Path = GOLDEN) -> dict[str, Any]:
    """The recorded file; ``FileNotFoundError`` names how to make it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; record it with "
                                f"'.venv/bin/python -m tests.golden.record'")
    return json.loads(path.read_text())
