"""Paired comparisons, round selection, CSV round trip and anomaly columns of
``fedpers report``, checked against numbers computed here independently (numpy
formulas, ``scipy.stats.ttest_rel`` and ``wilcoxon``, a hand-written Holm)."""

from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from scipy import stats

from fedpers.bench_tags import (
    TAG_BENCH,
    TAG_HASH,
    TAG_PARENT,
    TAG_REFERENCE_FRACTION,
    TAG_REFERENCES,
    TAG_SEED,
    TAG_TARGET,
    TAG_VARIANT,
    TAG_VARIANTS,
)
from fedpers.cli import main
from fedpers.report import make_report
from fedpers.report_compare import COMPARISON_FIELDS
from fedpers.report_data import ReportError
from fedpers.report_plots import COMPARISON_PLOT

ACC, CMEAN, CP10 = ("eval/global_accuracy", "eval/client_accuracy_mean",
                    "eval/client_accuracy_p10")
UP, DOWN = "comm/bytes_up_total", "comm/bytes_down_total"
ROUNDS = (1, 2, 3)
TARGET = 0.6
CLIENTS = 5


def _fake_sweep_data() -> tuple[dict, dict]:
    """variant -> seed -> round -> metrics, and variant -> seed -> client rows.

    ``ref`` runs seeds 0-3; ``fast`` seeds 0-3 and 7 (7 has no partner), about 0.08
    more accuracy and half the uplink; ``pair`` only seeds 0 and 1 (too few seeds).
    In ``fast``'s seed 1 client 0 did not report (no partner for the reference's), and
    the rest are listed in reverse order: pairing must go by client id.
    """
    rng = np.random.default_rng(42)
    seeds = {"ref": (0, 1, 2, 3), "fast": (0, 1, 2, 3, 7), "pair": (0, 1)}
    shift = {"ref": 0.0, "fast": 0.08, "pair": 0.01}
    up_per_round = {"ref": 1e6, "fast": 0.5e6, "pair": 1e6}
    hist: dict = {}
    clients: dict = {}
    for v, ss in seeds.items():
        for s in ss:
            base = 0.3 + 0.02 * s + rng.uniform(0.0, 0.03, len(ROUNDS)).cumsum()
            h = {}
            per_round = up_per_round[v] * float(rng.uniform(0.9, 1.1))
            for i, r in enumerate(ROUNDS):
                acc = float(base[i] + 0.12 * i + shift[v] + rng.normal(0, 0.01))
                h[r] = {ACC: acc, CMEAN: acc - 0.05 + float(rng.normal(0, 0.02)),
                        CP10: acc - 0.2 + float(rng.normal(0, 0.02)),
                        UP: per_round * r, DOWN: 2 * per_round * r,
                        "clients/evaluated": float(CLIENTS), "fairness/jain_selection": 1.0}
            h[2]["time/total_s"] = 10.0 * s + 1.5  # only logged at round 2
            hist.setdefault(v, {})[s] = h
            # fast's seed 1: client 0 missing, the others listed in reverse order
            ids = range(CLIENTS - 1, 0, -1) if (v, s) == ("fast", 1) else range(CLIENTS)
            clients.setdefault(v, {})[s] = [
                {"partition-id": c, "accuracy": float(rng.uniform(0.3, 0.9) + shift[v]),
                 "loss": float(rng.uniform(0.5, 1.5))} for c in ids]
    return hist, clients


HIST, CLIENT_ROWS = _fake_sweep_data()


def _log_child(client: MlflowClient, exp: str, parent: str, variant: str, seed: int,
               rounds: dict, rows: list[dict], folder: Path, bench: str = "cmp") -> str:
    """A child run tagged as ``fedpers bench`` tags it, with histories and artifact."""
    run = client.create_run(exp, tags={TAG_PARENT: parent, TAG_BENCH: bench,
                                       TAG_VARIANT: variant, TAG_SEED: str(seed),
                                       "mlflow.runName": f"{variant}/seed={seed}"})
    rid = run.info.run_id
    client.log_batch(rid, metrics=[Metric(k, v, 0, step) for step, values in rounds.items()
                                   for k, v in values.items()])
    path = folder / variant / str(seed) / "client_metrics.csv"
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    client.log_artifact(rid, str(path))
    client.set_terminated(rid, "FINISHED")
    return rid


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("cmp-bench", artifact_location=str(tmp / "artifacts"))
    parent = client.create_run(exp, tags={
        TAG_BENCH: "cmp", TAG_HASH: "h", TAG_VARIANTS: "ref,fast,pair",
        TAG_TARGET: repr(TARGET), TAG_REFERENCES: '{"ref":"ref","fast":"ref","pair":"ref"}',
        TAG_REFERENCE_FRACTION: "0.9", "mlflow.runName": "cmp"}).info.run_id
    for v, seeds in HIST.items():
        for s, rounds in seeds.items():
            _log_child(client, exp, parent, v, s, rounds, CLIENT_ROWS[v][s], tmp / "csv")
    client.set_terminated(parent, "FINISHED")
    return uri, parent, tmp


# ------------------------------------------------------ independent answers
def _holm(ps: list[float]) -> list[float]:
    """Holm by hand: sort, multiply the i-th smallest (0-based) by m - i, running max."""
    finite = [(p, i) for i, p in enumerate(ps) if not math.isnan(p)]
    finite.sort()
    m = len(finite)
    out = [math.nan] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def _value(v: str, s: int, key: str, how: str) -> float:
    series = [HIST[v][s][r][key] for r in ROUNDS]
    if how == "best":
        return max(series)
    if how == "last2":
        return (series[-1] + series[-2]) / 2
    return series[-1]


def _up_to_target(v: str, s: int) -> float | None:
    for r in ROUNDS:
        if HIST[v][s][r][ACC] >= TARGET:
            return HIST[v][s][r][UP]
    return None


def _expected(variant: str, key: str, how: str = "final") -> dict:
    seeds = sorted(set(HIST[variant]) & set(HIST["ref"]))
    if key == "comm/bytes_up_to_target":
        pairs = [(_up_to_target(variant, s), _up_to_target("ref", s)) for s in seeds]
        pairs = [p for p in pairs if None not in p]
    else:
        pairs = [(_value(variant, s, key, how), _value("ref", s, key, how)) for s in seeds]
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    d = a - b
    n = d.size
    out = {"n_seeds": n, "mean_diff": float(d.mean())}
    if n >= 2:
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
        out.update(ci_low=d.mean() - half, ci_high=d.mean() + half,
                   p_seeds=float(stats.ttest_rel(a, b).pvalue))
    else:
        out.update(ci_low=math.nan, ci_high=math.nan, p_seeds=math.nan)
    if key == CMEAN:
        x, y = [], []
        for s in seeds:
            theirs = {c["partition-id"]: c["accuracy"] for c in CLIENT_ROWS["ref"][s]}
            for c in CLIENT_ROWS[variant][s]:
                if c["partition-id"] in theirs:
                    x.append(c["accuracy"])
                    y.append(theirs[c["partition-id"]])
        out.update(n_clients=len(x), p_clients=float(stats.wilcoxon(x, y).pvalue))
    else:
        out.update(n_clients=0, p_clients=math.nan)
    return out


def _read_comparison(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COMPARISON_FIELDS
        return list(reader)


def _close(got: str, want: float) -> bool:
    if math.isnan(want):
        return got == "nan"
    return float(got) == pytest.approx(want, rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------- tests
def test_sweep_data_is_as_designed():
    """The verdicts below need these properties of the fake numbers."""
    assert all(HIST["fast"][s][3][ACC] > HIST["ref"][s][3][ACC] for s in range(4))
    assert sum(_up_to_target("fast", s) is not None and _up_to_target("ref", s) is not None
               for s in range(4)) >= 3


@pytest.mark.parametrize("how", ["final", "last2", "best"])
def test_comparison_numbers_match_an_independent_computation(sweep, tmp_path, how):
    uri, parent, _ = sweep
    kwargs = {"final": {}, "last2": {"last": 2}, "best": {"best": True}}[how]
    rep = make_report(parent, out=tmp_path, tracking_uri=uri, log_to_parent=False,
                      plots=False, **kwargs)
    rows = _read_comparison(tmp_path / "comparison.csv")
    metrics = [ACC, CMEAN, CP10, "comm/bytes_up_to_target"]
    # the reference is not compared with itself; variants in the benchmark's order
    assert [(r["variant"], r["reference"], r["metric"]) for r in rows] == [
        (v, "ref", m) for v in ("fast", "pair") for m in metrics]
    want = [_expected(r["variant"], r["metric"], how) for r in rows]
    holm_seeds = _holm([w["p_seeds"] for w in want])
    holm_clients = _holm([w["p_clients"] for w in want])
    for r, w, hs, hc in zip(rows, want, holm_seeds, holm_clients, strict=True):
        where = (r["variant"], r["metric"])
        assert int(r["n_seeds"]) == w["n_seeds"], where
        assert int(r["n_clients"]) == w["n_clients"], where
        for col in ("mean_diff", "ci_low", "ci_high", "p_seeds", "p_clients"):
            assert _close(r[col], w[col]), (where, col, r[col], w[col])
        assert _close(r["p_seeds_holm"], hs), where
        assert _close(r["p_clients_holm"], hc), where
        if w["n_seeds"] < 3:
            assert r["verdict"] == "too few seeds", where
        elif w["ci_low"] > 0 or w["ci_high"] < 0:
            good = (w["ci_low"] > 0) != (r["metric"] == "comm/bytes_up_to_target")
            assert r["verdict"] == ("better" if good else "worse"), where
        else:
            assert r["verdict"] == "no detectable difference", where
    by = {(r["variant"], r["metric"]): r for r in rows}
    # seed 7 of fast has no partner; client 0 of the reference's seed 1 neither
    assert by[("fast", ACC)]["n_seeds"] == "4"
    assert by[("fast", CMEAN)]["n_clients"] == str(4 * CLIENTS - 1)
    assert by[("fast", ACC)]["verdict"] == "better"
    assert by[("fast", "comm/bytes_up_to_target")]["verdict"] == "better"  # fewer bytes
    assert float(by[("fast", "comm/bytes_up_to_target")]["mean_diff"]) < 0
    assert by[("pair", ACC)]["verdict"] == "too few seeds"
    assert [c.metric for c in rep.comparisons] == [r["metric"] for r in rows]


def test_tables_say_which_round_they_show(sweep, tmp_path, monkeypatch):
    uri, parent, _ = sweep
    monkeypatch.setattr("fedpers.report.write_plots", lambda *a, **k: [])
    labels = {(): "final round", ("--last", "2"): "mean of the last 2 evaluated rounds",
              ("--best",): "best round (optimistic)"}
    for i, (flags, label) in enumerate(labels.items()):
        out = tmp_path / str(i)
        # the first from MLflow, the others from its CSVs (which honour the flags too)
        source = (["--from-csv", str(tmp_path / "0")] if i else
                  [parent, "--tracking-uri", uri])
        assert main(["report", *source, "--out", str(out), *flags]) == 0
        for name in ("summary.md", "comparison.md"):
            assert f"**{label}**" in (out / name).read_text().splitlines()[0], (name, flags)
    # the summary's figure follows the selection: ref's mean best global accuracy
    summary = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "2" / "summary.csv"))}
    want = np.mean([_value("ref", s, ACC, "best") for s in HIST["ref"]])
    assert float(summary["ref"]["global_acc_mean"]) == pytest.approx(want, rel=1e-12)


def test_last_and_best_exclude_each_other(sweep, tmp_path, capsys):
    uri, parent, _ = sweep
    with pytest.raises(SystemExit):
        main(["report", parent, "--tracking-uri", uri, "--last", "2", "--best"])
    with pytest.raises(ReportError, match="--last must be >= 1"):
        make_report(parent, out=tmp_path, tracking_uri=uri, last=0)


def test_cli_reference_compares_every_variant_with_it(sweep, tmp_path, monkeypatch, capsys):
    uri, parent, _ = sweep
    monkeypatch.setattr("fedpers.report.write_plots", lambda *a, **k: [])
    assert main(["report", "cmp-bench", "--tracking-uri", uri, "--out", str(tmp_path),
                 "--reference", "fast", "--last", "2"]) == 0
    rows = _read_comparison(tmp_path / "comparison.csv")
    # the command prints the comparison table too, rounded from the CSV's numbers
    r = next(r for r in rows if r["variant"] == "pair" and r["metric"] == ACC)
    assert (f"| pair | fast | global accuracy | 2 | {float(r['mean_diff']):+.4f} | "
            f"[{float(r['ci_low']):+.4f}, {float(r['ci_high']):+.4f}] | "
            f"{float(r['p_seeds']):.3g} | {float(r['p_seeds_holm']):.3g} | – | – | – | "
            "too few seeds |") in capsys.readouterr().out
    assert {(r["variant"], r["reference"]) for r in rows} == {("ref", "fast"), ("pair", "fast")}
    ref_acc = next(r for r in rows if r["variant"] == "ref" and r["metric"] == ACC)
    assert ref_acc["verdict"] == "worse"
    assert float(ref_acc["mean_diff"]) == pytest.approx(
        -_expected("fast", ACC, "last2")["mean_diff"])
    # report.json keeps --reference and --last: --from-csv alone redraws the same report
    assert main(["report", "--from-csv", str(tmp_path), "--out", str(tmp_path / "again")]) == 0
    for name in ("comparison.csv", "comparison.md", "summary.md", "report.json"):
        assert (tmp_path / "again" / name).read_text() == (tmp_path / name).read_text(), name
    assert main(["report", "--from-csv", str(tmp_path), "--out", str(tmp_path / "final"),
                 "--last", "1", "--reference", "ref"]) == 0
    redone = {(r["variant"], r["metric"]): r
              for r in _read_comparison(tmp_path / "final" / "comparison.csv")}
    assert float(redone[("fast", ACC)]["mean_diff"]) == pytest.approx(
        _expected("fast", ACC)["mean_diff"])
    with pytest.raises(ReportError, match="--reference 'nope' is not a variant"):
        make_report(parent, out=tmp_path, tracking_uri=uri, reference="nope")


def test_from_csv_gives_the_same_report_without_mlflow(sweep, tmp_path, monkeypatch):
    uri, parent, _ = sweep
    first = tmp_path / "mlflow"
    rep = make_report(parent, out=first, tracking_uri=uri, log_to_parent=False, plots=False)
    names = {p.name for p in rep.files}
    assert {"runs.csv", "clients.csv", "report.json"} <= names
    meta = json.loads((first / "report.json").read_text())
    assert meta == {"benchmark": "cmp", "parent_run_id": parent,
                    "variants": ["ref", "fast", "pair"], "target_accuracy": TARGET,
                    "references": {"ref": "ref", "fast": "ref", "pair": "ref"},
                    "reference_fraction": 0.9, "task_kind": "classification",
                    "selection": {"last": None, "best": False}}
    runs = list(csv.DictReader(open(first / "runs.csv")))
    assert len(runs) == 11 * len(ROUNDS)  # one row per child run and evaluated round
    row = next(r for r in runs if r["variant"] == "fast" and r["seed"] == "7"
               and r["round"] == "2")
    assert float(row[ACC]) == HIST["fast"][7][2][ACC]
    assert float(row["time/total_s"]) == 71.5 and row["fairness/jain_selection"] == "1.0"
    assert next(r for r in runs if r["round"] == "3")["time/total_s"] == ""
    clients = list(csv.DictReader(open(first / "clients.csv")))
    assert list(clients[0]) == ["variant", "seed", "run_id", "client", "accuracy", "loss"]
    assert len(clients) == 11 * CLIENTS - 1
    # no MLflow at all: any attempt to reach it fails the test
    import fedpers.tracking

    def no_mlflow(*args, **kwargs):
        raise AssertionError("--from-csv touched MLflow")

    monkeypatch.setattr(fedpers.tracking.Tracker, "connect", no_mlflow)
    second = tmp_path / "csv"
    assert main(["report", "--from-csv", str(first), "--out", str(second)]) == 0
    for name in ("summary.md", "summary.csv", "comparison.csv", "comparison.md",
                 "reference.csv", "runs.csv", "clients.csv", "report.json"):
        assert (second / name).read_bytes() == (first / name).read_bytes(), name
    assert (second / COMPARISON_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_large_csvs_are_gzipped_and_read_back(sweep, tmp_path, monkeypatch):
    import fedpers.report_data

    uri, parent, _ = sweep
    monkeypatch.setattr(fedpers.report_data, "GZIP_OVER", 2000)
    first = tmp_path / "a"
    make_report(parent, out=first, tracking_uri=uri, log_to_parent=False, plots=False)
    assert not (first / "runs.csv").exists()
    text = gzip.decompress((first / "runs.csv.gz").read_bytes()).decode()
    assert text.startswith("variant,seed,run_id,round,") and len(text) > 2000
    make_report(out=tmp_path / "b", from_csv=first, plots=False)
    assert ((tmp_path / "b" / "comparison.csv").read_text()
            == (first / "comparison.csv").read_text())


def test_from_csv_needs_a_report_folder(tmp_path, capsys):
    with pytest.raises(ReportError, match="report.json not found"):
        make_report(from_csv=tmp_path)
    (tmp_path / "report.json").write_text('{"benchmark": "x"}')
    with pytest.raises(ReportError, match="key 'parent_run_id' is missing"):
        make_report(from_csv=tmp_path)
    assert main(["report"]) == 2
    assert "or give --from-csv DIR" in capsys.readouterr().err


# ------------------------------------------------------------ anomaly runs
ANOMALY_KEYS = ("eval/global_auroc", "eval/global_auprc", "eval/global_f1",
                "eval/client_auroc_mean", "eval/client_auroc_p10", "eval/client_f1_mean",
                "eval/client_f1_p10", "eval/client_f1_global_threshold_mean",
                "eval/client_f1_global_threshold_p10")


def test_anomaly_runs_get_scores_in_summary_and_comparison(tracking_uri, tmp_path):
    rng = np.random.default_rng(3)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.create_experiment("ad", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={TAG_BENCH: "ad", TAG_HASH: "h",
                                          TAG_VARIANTS: "none,ft"}).info.run_id
    values: dict = {}
    for v in ("none", "ft"):
        for s in (0, 1, 2):
            metrics = {k: float(rng.uniform(0.5, 0.9)) for k in ANOMALY_KEYS}
            metrics.update({ACC: 0.9, UP: 1e5, DOWN: 2e5})
            values[(v, s)] = metrics
            rows = [{"partition-id": c, "accuracy": 0.9, "auroc": float(rng.uniform(0.5, 1)),
                     "auprc": 0.5, "f1": float(rng.uniform(0, 1)),
                     "f1-global-threshold": float(rng.uniform(0, 1))} for c in range(4)]
            _log_child(client, exp, parent, v, s, {1: metrics}, rows, tmp_path / "c", "ad")
    rep = make_report(parent, out=tmp_path / "out", tracking_uri=tracking_uri,
                      reference="none", log_to_parent=False, plots=False)
    header = [ln for ln in rep.table.splitlines() if ln.startswith("|")][0]
    assert header.startswith("| variant | seeds | AUROC | AUPRC | F1 (global thr) | "
                             "device AUROC (mean) | device AUROC (p10) | "
                             "device F1, own thr (mean) | device F1, own thr (p10) | "
                             "device F1, global thr (mean) | device F1, global thr (p10) | "
                             "flag acc |")
    summary = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "out" / "summary.csv"))}
    want = np.mean([values[("ft", s)]["eval/client_f1_global_threshold_p10"] for s in range(3)])
    assert float(summary["ft"]["client_f1_global_threshold_p10"]) == pytest.approx(want)
    rows = {r["metric"]: r for r in _read_comparison(tmp_path / "out" / "comparison.csv")}
    assert set(ANOMALY_KEYS) <= set(rows)
    d = [values[("ft", s)]["eval/global_auprc"] - values[("none", s)]["eval/global_auprc"]
         for s in range(3)]
    assert float(rows["eval/global_auprc"]["mean_diff"]) == pytest.approx(np.mean(d))
    # per-device tests on the device-mean rows: 3 seeds x 4 devices
    for key in ("eval/client_auroc_mean", "eval/client_f1_mean",
                "eval/client_f1_global_threshold_mean"):
        assert rows[key]["n_clients"] == "12", key
    assert rows["eval/global_auroc"]["n_clients"] == "0"
    assert json.loads((tmp_path / "out" / "report.json").read_text())["task_kind"] == "anomaly"
