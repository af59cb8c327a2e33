"""``fedpers report`` writes its summary onto the benchmark's parent run: a Markdown
description (the tag MLflow's UI shows) and per-variant headline metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_report import fake_sweep  # noqa: F401 - the fixture

from fedpers.bench_tags import TAG_REFERENCES
from fedpers.report import DESCRIPTION_TAG, MAX_DESCRIPTION, make_report, parent_description


def test_the_parent_gets_the_summary_and_headline_metrics(fake_sweep, tmp_path):  # noqa: F811
    uri, parent = fake_sweep
    client = MlflowClient(tracking_uri=uri)
    client.set_tag(parent, TAG_REFERENCES, '{"fast":"fast","slim":"fast"}')
    rep = make_report(parent, out=tmp_path / "out", tracking_uri=uri, plots=False)
    run = client.get_run(parent)
    note = run.data.tags[DESCRIPTION_TAG]
    assert note.startswith("**Benchmark `fake`**")
    assert rep.table in note  # the summary table, as in summary.md
    # the paired verdicts (two seeds: too few to decide)
    assert "- **slim** vs fast, global accuracy: Δ -0.2000" in note
    assert "**too few seeds**" in note
    m = run.data.metrics
    # fast: final accuracies 0.8 and 0.9; slim: 0.6 and 0.7 (see test_report.FAKE)
    assert m["fast/global_accuracy_mean"] == pytest.approx(0.85)
    assert m["fast/global_accuracy_std"] == pytest.approx(0.0707107, abs=1e-6)
    assert m["slim/global_accuracy_mean"] == pytest.approx(0.65)
    assert m["slim/client_accuracy_p10"] == pytest.approx(0.25)
    assert m["fast/bytes_up_total"] == 3e6 and m["slim/seeds"] == 2


def test_without_logging_to_the_parent_nothing_is_written(fake_sweep, tmp_path):  # noqa: F811
    uri, parent = fake_sweep
    make_report(parent, out=tmp_path / "out", tracking_uri=uri, log_to_parent=False,
                plots=False)
    run = MlflowClient(tracking_uri=uri).get_run(parent)
    assert DESCRIPTION_TAG not in run.data.tags and not run.data.metrics


def test_a_long_description_is_cut_to_what_mlflow_takes(tmp_path):
    from fedpers.report_data import ReportMeta

    meta = ReportMeta("p", "big", ("a",), None)
    text = parent_description(meta, "| x |\n" * 5000, [], tmp_path)
    assert len(text) <= MAX_DESCRIPTION and text.endswith("artifacts `report/`)\n")


def test_the_sweep_note_gives_way_to_a_report(fake_sweep, tmp_path):  # noqa: F811
    """``fedpers bench`` writes its own short note only while a report's summary is not
    the description, or when it runs something (then the report is out of date)."""
    from fedpers.bench_definition import load_benchmark
    from fedpers.bench_plan import plan_runs
    from fedpers.bench_sweep import _has_report, sweep_note
    from fedpers.bench_tags import TAG_NOTE

    uri, parent = fake_sweep
    client = MlflowClient(tracking_uri=uri)
    assert not _has_report(client, parent)  # no description yet
    bench = load_benchmark(Path(__file__).parents[1] / "benchmarks" / "quickstart")
    runs = plan_runs(bench, quick=True, experiment="x", tracking_uri=uri)
    note = sweep_note(bench, runs, True, parent, uri, "Running.")
    assert note.startswith("Benchmark sweep **quickstart** (quick): 3 variants")
    assert f"fedpers report {parent} --tracking-uri {uri}" in note
    client.set_tag(parent, TAG_NOTE, note)
    assert not _has_report(client, parent)
    make_report(parent, out=tmp_path / "out", tracking_uri=uri, plots=False)
    assert _has_report(client, parent)
