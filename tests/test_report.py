"""Reports from known fake runs in a temporary MLflow store: exact numbers, real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from fedpers.bench_tags import (
    TAG_BENCH,
    TAG_HASH,
    TAG_PARENT,
    TAG_REFERENCE_FRACTION,
    TAG_REFERENCES,
    TAG_TARGET,
    TAG_VARIANT,
    TAG_VARIANTS,
)
from fedpers.cli import main
from fedpers.report import make_report
from fedpers.report_data import ReportError
from fedpers.report_plots import PLOTS, TIME_PLOT

# variant -> seed -> round -> (global acc, client mean, client p10, bytes up, bytes down)
# Bytes per round: 1 MB up and 2 MB down for "fast", half that for "slim".
FAKE = {
    "fast": {
        0: {1: (0.50, 0.40, 0.20, 1e6, 2e6), 2: (0.70, 0.60, 0.30, 2e6, 4e6),
            3: (0.80, 0.70, 0.50, 3e6, 6e6)},
        1: {1: (0.60, 0.50, 0.30, 1e6, 2e6), 2: (0.65, 0.50, 0.30, 2e6, 4e6),
            3: (0.90, 0.80, 0.60, 3e6, 6e6)},
    },
    "slim": {
        0: {1: (0.30, 0.30, 0.10, 0.5e6, 1e6), 2: (0.40, 0.30, 0.10, 1e6, 2e6),
            3: (0.60, 0.50, 0.20, 1.5e6, 3e6)},
        1: {1: (0.30, 0.30, 0.10, 0.5e6, 1e6), 2: (0.50, 0.40, 0.20, 1e6, 2e6),
            3: (0.70, 0.50, 0.30, 1.5e6, 3e6)},
    },
}
CLIENT_ACC = {"fast": [0.5, 0.9], "slim": [0.2, 0.4, 0.6]}
KEYS = ("eval/global_accuracy", "eval/client_accuracy_mean", "eval/client_accuracy_p10",
        "comm/bytes_up_total", "comm/bytes_down_total")


def _child(client: MlflowClient, exp: str, parent: str, variant: str, seed: int,
           rounds: dict, tmp: Path, status: str = "FINISHED", time_s: float | None = None
           ) -> str:
    run = client.create_run(exp, tags={TAG_PARENT: parent, TAG_VARIANT: variant,
                                       "mlflow.runName": f"{variant}/seed={seed}"})
    rid = run.info.run_id
    metrics = [Metric(k, v, 0, step) for step, values in rounds.items()
               for k, v in zip(KEYS, values, strict=True)]
    if time_s is not None:
        metrics.append(Metric("time/total_s", time_s, 0, max(rounds)))
    client.log_batch(rid, metrics=metrics)
    csv = tmp / variant / str(seed) / "client_metrics.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("partition-id,accuracy,loss\n" + "".join(
        f"{i},{a},1.0\n" for i, a in enumerate(CLIENT_ACC[variant])))
    client.log_artifact(rid, str(csv))
    client.set_terminated(rid, status)
    return rid


@pytest.fixture
def fake_sweep(tmp_path, tracking_uri):
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.create_experiment("fake-bench", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={TAG_BENCH: "fake", TAG_HASH: "h",
                                          TAG_VARIANTS: "slim,fast", TAG_TARGET: "0.7",
                                          "mlflow.runName": "fake"}).info.run_id
    for variant, seeds in FAKE.items():
        for seed, rounds in seeds.items():
            _child(client, exp, parent, variant, seed, rounds, tmp_path / "csv")
    # an interrupted child: must not count
    _child(client, exp, parent, "fast", 9, {1: (0.0, 0.0, 0.0, 1.0, 1.0)},
           tmp_path / "csv-killed", status="KILLED")
    client.set_terminated(parent, "FINISHED")
    return tracking_uri, parent


def _table_lines(text: str) -> list[str]:
    """The first Markdown table of ``text`` (its caption and what follows left out)."""
    lines = text.strip().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")),
               len(lines))
    return lines[start:end]


def _rows(table: str) -> dict[str, list[str]]:
    lines = [ln.strip("|").split(" | ") for ln in _table_lines(table)]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in lines[2:]}


def test_table_numbers_are_exact(fake_sweep, tmp_path):
    uri, parent = fake_sweep
    rep = make_report(parent, out=tmp_path / "out", tracking_uri=uri)
    assert rep.table.splitlines()[0] == ("Accuracy and scores at: **final round** "
                                         "(mean ± sample std over seeds).")
    header = _table_lines(rep.table)[0]
    assert header == ("| variant | seeds | global acc | client acc (mean) | client acc (p10) "
                      "| MB up | MB down | rounds to 0.7 | MB to 0.7 (up+down) | MB up to 0.7 |")
    rows = _rows(rep.table)
    assert list(rows) == ["slim", "fast"]  # the benchmark's declared order
    # fast: final acc 0.8, 0.9 -> mean 0.85, sample std 0.0707; client mean 0.7/0.8;
    # p10 0.5/0.6; 3 MB up, 6 MB down; target 0.7 at rounds 2 and 3 (mean 2.5) with
    # 6 MB and 9 MB up+down (mean 7.5 MB), of which 2 MB and 3 MB up (mean 2.5 MB)
    assert rows["fast"] == ["fast", "2", "0.8500 ± 0.0707", "0.7500 ± 0.0707",
                            "0.5500 ± 0.0707", "3.00", "6.00", "2.5", "7.50", "2.50"]
    # slim: only seed 1 reaches 0.7 (round 3, 4.5 MB, 1.5 MB of it up)
    assert rows["slim"] == ["slim", "2", "0.6500 ± 0.0707", "0.5000 ± 0.0000",
                            "0.2500 ± 0.0707", "1.50", "3.00", "3.0 (1/2)", "4.50 (1/2)",
                            "1.50 (1/2)"]


def test_target_override_and_not_reached(fake_sweep, tmp_path):
    uri, parent = fake_sweep
    rows = _rows(make_report(parent, out=tmp_path, tracking_uri=uri, target_accuracy=0.85,
                             log_to_parent=False).table)
    assert rows["fast"][-3:] == ["3.0 (1/2)", "9.00 (1/2)", "3.00 (1/2)"]
    assert rows["slim"][-3:] == ["not reached", "not reached", "not reached"]


def test_csv_holds_unrounded_figures(fake_sweep, tmp_path):
    import csv

    uri, parent = fake_sweep
    make_report(parent, out=tmp_path, tracking_uri=uri, log_to_parent=False)
    rows = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert float(rows["fast"]["global_acc_mean"]) == pytest.approx(0.85)
    assert float(rows["fast"]["global_acc_std"]) == pytest.approx(0.0707106781)
    assert float(rows["slim"]["bytes_to_target"]) == 4.5e6
    assert rows["slim"]["seeds_reaching_target"] == "1"


def test_plots_are_written_and_logged_to_the_parent(fake_sweep, tmp_path):
    uri, parent = fake_sweep
    rep = make_report(parent, out=tmp_path / "out", tracking_uri=uri)
    for name in PLOTS:
        path = tmp_path / "out" / name
        assert path.stat().st_size > 5000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(tracking_uri=uri)
    logged = {Path(a.path).name for a in client.list_artifacts(parent, "report")}
    # no reference in this sweep: comparison files without rows, no forest plot
    assert logged == {p.name for p in rep.files} == {
        "summary.md", "summary.csv", "comparison.md", "comparison.csv", "runs.csv",
        "clients.csv", "report.json", *PLOTS}


def test_experiment_name_finds_the_latest_sweep_and_cli_prints_the_table(fake_sweep, tmp_path,
                                                                         capsys):
    uri, parent = fake_sweep
    assert main(["report", "fake-bench", "--tracking-uri", uri, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| fast | 2 | 0.8500 ± 0.0707 |" in out
    assert f"mlflow ui --backend-store-uri {uri}" in out
    # a newer sweep of the same experiment wins
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fake-bench").experiment_id
    newer = client.create_run(exp, tags={TAG_BENCH: "fake", TAG_HASH: "h2"}).info.run_id
    _child(client, exp, newer, "slim", 0, FAKE["slim"][0], tmp_path / "csv2", time_s=12.5)
    rep = make_report("fake-bench", out=tmp_path / "new", tracking_uri=uri)
    assert rep.parent_run_id == newer
    # one seed: no ±; no target declared: no target columns; time where logged
    assert _rows(rep.table)["slim"] == ["slim", "1", "0.6000", "0.5000", "0.2000", "1.50",
                                        "3.00", "12.5"]
    # with a target and the simulated clock: time to target = time/total_s at that round
    rep = make_report("fake-bench", out=tmp_path / "t", tracking_uri=uri,
                      target_accuracy=0.6, log_to_parent=False)
    assert _table_lines(rep.table)[0].endswith("| MB up to 0.6 | time (s) | time to 0.6 (s) |")
    assert _rows(rep.table)["slim"][-5:] == ["3.0", "4.50", "1.50", "12.5", "12.5"]
    # the simulated clock also gets its accuracy-vs-time plot
    assert (tmp_path / "t" / TIME_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out" / TIME_PLOT).exists()  # the first sweep logged no clock


def test_variants_against_their_reference(fake_sweep, tmp_path):
    import csv

    uri, parent = fake_sweep
    client = MlflowClient(tracking_uri=uri)
    client.set_tag(parent, TAG_REFERENCES, '{"fast":"fast","slim":"fast"}')
    client.set_tag(parent, TAG_REFERENCE_FRACTION, "0.8")
    rep = make_report(parent, out=tmp_path, tracking_uri=uri, log_to_parent=False)
    head, _, ref_table = rep.table.partition("Against the reference variant")
    assert "Δ acc vs ref" not in head
    lines = ref_table.strip().splitlines()
    assert lines[2].startswith("| variant | reference | seeds | Δ acc vs ref (points) |")
    rows = _rows("\n".join(lines[2:]))
    # goal = 0.8 x fast's mean final accuracy 0.85 = 0.68. fast reaches it at rounds 2
    # and 3 (2 MB and 3 MB up, mean 2.5 MB); slim only with seed 1, round 3, 1.5 MB.
    # slim: final 0.65 vs 0.85 = -20 points; 1.5 MB up vs 3 MB = 0.5; 1.5 / 2.5 = 0.6
    assert rows["fast"] == ["fast", "fast", "2", "+0.00", "1", "0.6800", "2.5", "2.50", "1"]
    assert rows["slim"] == ["slim", "fast", "2", "-20.00", "0.5", "0.6800", "3.0 (1/2)",
                            "1.50 (1/2)", "0.6 (1/2)"]
    by_variant = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "reference.csv"))}
    assert float(by_variant["slim"]["up_bytes_to_goal_ratio"]) == pytest.approx(0.6)
    assert float(by_variant["slim"]["acc_delta_points"]) == pytest.approx(-20.0)
    assert (tmp_path / "reference.csv") in rep.files


def test_unknown_target_fails_clearly(tracking_uri, capsys):
    assert main(["report", "x", "--tracking-uri", tracking_uri]) == 2
    assert "no MLflow store" in capsys.readouterr().err  # reading never creates a store
    MlflowClient(tracking_uri=tracking_uri).search_experiments()  # an empty store
    with pytest.raises(ReportError, match="neither an MLflow experiment nor a run id"):
        make_report("no-such-thing", tracking_uri=tracking_uri)
    assert main(["report", "no-such-thing", "--tracking-uri", tracking_uri]) == 2
    assert "neither an MLflow experiment" in capsys.readouterr().err


def test_parent_without_finished_children_fails(tracking_uri, tmp_path):
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.create_experiment("empty", artifact_location=str(tmp_path / "artifacts"))
    client.create_run(exp, tags={TAG_BENCH: "empty", TAG_HASH: "h"})
    with pytest.raises(ReportError, match="no finished child runs"):
        make_report("empty", tracking_uri=tracking_uri)


def test_plots_get_one_panel_per_reference_group():
    from fedpers.report_plots import _panels

    runs = {v: [] for v in ("a", "a2", "b", "b2", "lone")}
    panels = _panels(runs, {"a": "a", "a2": "a", "b": "b", "b2": "b"})
    assert {k: list(v) for k, v in panels.items()} == {
        "vs a": ["a", "a2"], "vs b": ["b", "b2"], "other": ["lone"]}
    # one reference (or none): every variant in one panel
    assert list(_panels(runs, {"a": "a", "b": "a"})) == [""]
    assert list(_panels(runs, {})[""]) == list(runs)
