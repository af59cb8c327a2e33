"""Benchmarks as data: definition parsing, config merging, validation, resume, --quick."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT
from mlflow.tracking import MlflowClient

from fedpers import bench_sweep
from fedpers.bench_definition import QUICK_DEFAULTS, BenchmarkError, load_benchmark
from fedpers.bench_plan import merge_config, plan_runs, select_seeds, sweep_hash
from fedpers.bench_tags import TAG_BENCH, TAG_DIGEST, TAG_PARENT, TAG_SEED, TAG_VARIANT
from fedpers.cli import main

BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").iterdir()
                    if p.is_dir() and (p / "benchmark.toml").is_file())

TINY = """
seeds = [7, 8, 9]
target-accuracy = 0.5

[base]
task = "digits"
num-clients = 4
num-server-rounds = 5
partition = "iid"

[variants.a]
lr = 0.1

[variants.b]
lr = 0.2
local-epochs = 2

[quick]
num-clients = 2
"""


def write_bench(folder: Path, text: str, readme: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "benchmark.toml").write_text(textwrap.dedent(text))
    if readme:
        (folder / "README.md").write_text("# question\n\nexpected outcome\n")
    return folder


# ------------------------------------------------------------------- parsing
def test_load_keeps_declaration_order_and_values(tmp_path):
    b = load_benchmark(write_bench(tmp_path / "tiny", TINY))
    assert b.name == "tiny"
    assert [v.name for v in b.variants] == ["a", "b"]
    assert dict(b.variants[1].overrides) == {"lr": 0.2, "local-epochs": 2}
    assert b.seeds == (7, 8, 9)
    assert b.target_accuracy == 0.5
    assert dict(b.quick) == {"num-clients": 2}
    with pytest.raises(AttributeError):
        b.name = "other"  # frozen


def test_merge_base_variant_seed(tmp_path):
    b = load_benchmark(write_bench(tmp_path / "tiny", TINY))
    raw = merge_config(b, b.variants[1], 8)
    assert raw == {"task": "digits", "num-clients": 4, "num-server-rounds": 5,
                   "partition": "iid", "lr": 0.2, "local-epochs": 2, "seed": 8}


def test_merge_rounds_and_quick_order(tmp_path):
    b = load_benchmark(write_bench(tmp_path / "tiny", TINY))
    raw = merge_config(b, b.variants[0], 7, rounds=3, quick=True, experiment="e",
                       tracking_uri="sqlite:///x.db")
    # quick defaults, then the benchmark's [quick], then seed and --rounds
    assert raw["task"] == "digits"
    assert raw["num-clients"] == 2                                   # [quick] beats defaults
    assert raw["fraction-train"] == QUICK_DEFAULTS["fraction-train"]
    assert raw["num-server-rounds"] == 3                             # --rounds beats quick
    assert raw["lr"] == 0.1 and raw["seed"] == 7
    assert raw["experiment"] == "e" and raw["tracking-uri"] == "sqlite:///x.db"
    assert merge_config(b, b.variants[0], 7, quick=True)["num-server-rounds"] == \
        QUICK_DEFAULTS["num-server-rounds"]


def test_plan_is_variants_times_seeds_and_validated(tmp_path):
    b = load_benchmark(write_bench(tmp_path / "tiny", TINY))
    runs = plan_runs(b, rounds=2)
    # seed-major: a sweep stopped part-way has every variant at least once
    assert [(r.variant, r.seed) for r in runs] == [("a", 7), ("b", 7), ("a", 8),
                                                   ("b", 8), ("a", 9), ("b", 9)]
    assert all(r.cfg.num_server_rounds == 2 for r in runs)
    assert runs[3].cfg.lr == 0.2 and runs[3].cfg.local_epochs == 2 and runs[3].cfg.seed == 8
    assert len({r.digest for r in runs}) == 6
    assert runs[0].run_name == "a/seed=7"


@pytest.mark.parametrize(("n", "quick", "expected"), [
    (None, False, (7, 8, 9)), (None, True, (7,)), (2, False, (7, 8)), (2, True, (7, 8)),
    (3, False, (7, 8, 9)), (5, False, (0, 1, 2, 3, 4)),
])
def test_select_seeds(n, quick, expected):
    assert select_seeds((7, 8, 9), n, quick) == expected


def test_sweep_hash_depends_on_what_runs_not_where(tmp_path):
    b = load_benchmark(write_bench(tmp_path / "tiny", TINY))
    h = sweep_hash(b, plan_runs(b))
    assert h == sweep_hash(b, plan_runs(b, experiment="x", tracking_uri="sqlite:///y.db"))
    assert h != sweep_hash(b, plan_runs(b, rounds=2))
    assert h != sweep_hash(b, plan_runs(b, seeds=2))
    assert h != sweep_hash(b, plan_runs(b, quick=True), quick=True)


# ---------------------------------------------------------------- validation
BAD = {
    "unknown top-level key": ("[base]\ntask='digits'\n[variants.a]\nlr=0.1\nseeds=[0]\n"
                              "[extra]\nx=1\n", "unknown key(s) 'extra'"),
    "unknown run-config key in base": ("seeds=[0]\n[base]\nlearning-rate=0.1\n"
                                       "[variants.a]\nlr=0.1\n",
                                       "[base]: unknown run-config key(s) 'learning-rate'"),
    "unknown run-config key in variant": ("seeds=[0]\n[base]\nlr=0.1\n[variants.a]\nlr=0.2\n"
                                          "epochs=3\n", "[variants.a]: unknown run-config"),
    "unknown run-config key in quick": ("seeds=[0]\n[base]\nlr=0.1\n[variants.a]\nlr=0.2\n"
                                        "[quick]\nrounds=3\n", "[quick] applied to "
                                                               "[variants.a]: unknown"),
    "unknown strategy name": ("seeds=[0]\n[base]\nlr=0.1\n[variants.a]\nstrategy='nope'\n",
                              "unknown name 'nope'"),
    "bad value": ("seeds=[0]\n[base]\nlr=-1.0\n[variants.a]\nalpha=0.1\n",
                  "'lr' = -1.0: must be > 0"),
    "empty variant": ("seeds=[0]\n[base]\nlr=0.1\n[variants.a]\n", "[variants.a] overrides "
                                                                    "nothing"),
    "variant equal to base": ("seeds=[0]\n[base]\nlr=0.1\nalpha=0.3\n[variants.a]\n"
                              "lr=0.1\nalpha=0.3\n", "only repeats [base] values"),
    "variant equal to base after coercion": ("seeds=[0]\n[base]\nnum-clients=4\n"
                                             "[variants.a]\nnum-clients=4.0\n",
                                             "only repeats [base] values"),
    "two equal variants": ("seeds=[0]\n[base]\nlr=0.1\n[variants.a]\nalpha=0.5\n"
                           "[variants.b]\nalpha=0.5\n", "variants 'a' and 'b' give the same"),
    "no variants": ("seeds=[0]\n[base]\nlr=0.1\n", "at least one variant"),
    "empty seeds": ("seeds=[]\n[base]\nlr=0.1\n[variants.a]\nlr=0.2\n",
                    "'seeds' must be a non-empty list"),
    "missing seeds": ("[base]\nlr=0.1\n[variants.a]\nlr=0.2\n", "'seeds' is missing"),
    "duplicate seeds": ("seeds=[1, 1]\n[base]\nlr=0.1\n[variants.a]\nlr=0.2\n",
                        "lists a seed twice"),
    "seed in base": ("seeds=[0]\n[base]\nseed=3\n[variants.a]\nlr=0.2\n",
                     "[base] sets seed, which the runner sets"),
    "tracking-uri in variant": ("seeds=[0]\n[base]\nlr=0.1\n[variants.a]\n"
                                "tracking-uri='x'\n",
                                "[variants.a] sets tracking-uri, which the runner sets"),
    "bad target": ("seeds=[0]\ntarget-accuracy=70\n[base]\nlr=0.1\n[variants.a]\nlr=0.2\n",
                   "'target-accuracy' must be a number in (0, 1]"),
    "not TOML": ("seeds = [0\n", "is not valid TOML"),
    "unknown reference": ("seeds=[0]\nreference='c'\n[base]\nlr=0.1\n[variants.a]\n"
                          "lr=0.2\n", "'reference' names 'c', which is not a variant"),
    "unknown variant under a reference": ("seeds=[0]\n[base]\nlr=0.1\n[variants.a]\n"
                                          "lr=0.2\n[reference]\na=['z']\n",
                                          "[reference] 'a' names 'z'"),
    "two references": ("seeds=[0]\n[base]\nlr=0.1\n[variants.a]\nlr=0.2\n[variants.b]\n"
                       "lr=0.3\n[variants.c]\nlr=0.4\n[reference]\na=['c']\nb=['c']\n",
                       "variant 'c' has two references"),
    "fraction without reference": ("seeds=[0]\nreference-fraction=0.9\n[base]\nlr=0.1\n"
                                   "[variants.a]\nlr=0.2\n", "no 'reference' is declared"),
    "bad fraction": ("seeds=[0]\nreference='a'\nreference-fraction=95\n[base]\nlr=0.1\n"
                     "[variants.a]\nlr=0.2\n", "'reference-fraction' must be a number"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_definitions_fail_before_running(case, tmp_path, monkeypatch):
    text, message = BAD[case]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a run started")

    monkeypatch.setattr("fedpers.simulation.run_simulation", must_not_run)
    folder = write_bench(tmp_path / "bad", text)
    with pytest.raises(BenchmarkError) as info:
        bench_sweep.run_benchmark(folder, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                            progress=False)
    assert message in str(info.value)
    assert str(folder) in str(info.value)
    assert not (tmp_path / "m.db").exists()  # failed before touching MLflow


def test_references_as_one_name_or_a_table(tmp_path):
    one = load_benchmark(write_bench(tmp_path / "one", "reference = 'a'\n" + TINY))
    assert dict(one.references) == {"a": "a", "b": "a"} and one.reference_fraction == 1.0
    table = TINY + "[variants.c]\nlr = 0.3\n[reference]\nb = ['c']\n"
    many = load_benchmark(write_bench(tmp_path / "1" / "b", "reference-fraction = 0.95\n" + table))
    assert dict(many.references) == {"b": "b", "c": "b"} and many.reference_fraction == 0.95
    # how variants are compared is not part of what runs: same sweep hash
    plain = load_benchmark(write_bench(tmp_path / "2" / "b", table.split("[reference]")[0]))
    assert not plain.references
    assert sweep_hash(many, plan_runs(many)) == sweep_hash(plain, plan_runs(plain))


def test_missing_readme_or_folder(tmp_path):
    with pytest.raises(BenchmarkError, match="README.md"):
        load_benchmark(write_bench(tmp_path / "noreadme", TINY, readme=False))
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_benchmark(tmp_path / "nope")


def test_cli_reports_a_bad_benchmark_clearly(tmp_path, capsys):
    folder = write_bench(tmp_path / "bad", BAD["empty seeds"][0])
    assert main(["bench", str(folder), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "'seeds' must be a non-empty list" in capsys.readouterr().err


def test_a_bad_quick_table_fails_full_sweeps_too(tmp_path):
    text = TINY.replace("[quick]\nnum-clients = 2", "[quick]\nnum-clients = 0")
    with pytest.raises(BenchmarkError,
                       match=r"\[quick\] applied to \[variants.a\]: .*'num-clients'"):
        load_benchmark(write_bench(tmp_path / "q", text))


@pytest.mark.parametrize("folder", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_every_declared_benchmark_is_valid(folder):
    b = load_benchmark(folder)
    assert plan_runs(b) and plan_runs(b, quick=True)
    readme = (folder / "README.md").read_text()
    assert "fedpers bench" in readme


# ---------------------------------------------------------- end to end (Ray)
SMOKE = """
seeds = [0, 1]

[base]
task = "digits"
num-clients = 2
num-server-rounds = 2
partition = "iid"
max-samples-per-client = 200

[variants.lr-a]
lr = 0.1

[variants.lr-b]
lr = 0.2
"""


def _children(uri: str, parent: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exp_ids, filter_string=f"tags.`{TAG_PARENT}` = '{parent}'")


def _wait_for_first_finished_child(uri: str, proc: subprocess.Popen, log: Path,
                                   timeout: float) -> str:
    client = MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, ("the sweep ended before a child finished:\n"
                                     + log.read_text()[-3000:])
        try:
            exp_ids = [e.experiment_id for e in client.search_experiments()]
            done = client.search_runs(exp_ids, filter_string="attributes.status = 'FINISHED'"
                                      f" and tags.`{TAG_VARIANT}` LIKE '%'")
        except Exception:  # noqa: BLE001 - the store may not exist yet
            done = []
        if done:
            return done[0].info.run_id
        time.sleep(0.3)
    raise AssertionError("no child run finished in time")


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_rerunning_finished_children(tmp_path):
    folder = write_bench(tmp_path / "smoke", SMOKE)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cmd = [sys.executable, "-m", "fedpers.cli", "bench", str(folder), "--seeds", "1",
           "--tracking-uri", uri, "--no-progress"]
    # create the store first: this test's polling and the sweep would otherwise both run
    # MLflow's schema migrations on the new sqlite file ("table ... already exists")
    MlflowClient(tracking_uri=uri).search_experiments()
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        first = _wait_for_first_finished_child(uri, proc, log, timeout=150)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the Ray processes it started
        proc.wait()

    res = bench_sweep.run_benchmark(folder, seeds=1, tracking_uri=uri, progress=False)
    assert res.reused == (first,)
    assert len(res.ran) == 1 and not res.failed
    children = _children(uri, res.parent_run_id)
    finished = {c.info.run_id for c in children if c.info.status == "FINISHED"}
    assert finished == {first, *res.ran}
    assert {c.data.tags[TAG_VARIANT] for c in children if c.info.run_id in finished} == \
        {"lr-a", "lr-b"}
    # the child the kill interrupted (if it had started) is marked, not reused
    assert all(c.info.status == "KILLED" for c in children if c.info.run_id not in finished)
    for c in children:
        if c.info.run_id in finished:
            assert c.data.tags[TAG_DIGEST] == c.data.tags["fedpers.config_digest"]
    # a finished sweep reruns nothing and keeps its parent
    again = bench_sweep.run_benchmark(folder, seeds=1, tracking_uri=uri, progress=False)
    assert again.parent_run_id == res.parent_run_id
    assert again.ran == () and set(again.reused) == finished


@pytest.mark.slow
@pytest.mark.parametrize("folder", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_each_benchmark_runs_quick_end_to_end(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["bench", str(folder), "--quick", "--tracking-uri", uri]) == 0
    b = load_benchmark(folder)
    out = tmp_path / "report"
    assert main(["report", f"{b.name}-quick", "--tracking-uri", uri, "--out", str(out)]) == 0
    table = (out / "summary.md").read_text()
    ran = [v.name for v in b.variants if not b.quick_variants or v.name in b.quick_variants]
    for name in ran:
        assert f"| {name} | 1 |" in table
    for v in b.variants:
        if v.name not in ran:
            assert f"| {v.name} |" not in table
    assert all((out / p).stat().st_size > 0 for p in ("accuracy_vs_round.png",
                                                       "client_accuracy.png"))


def test_quick_variants_limit_quick_sweeps_only(tmp_path):
    folder = tmp_path / "qv"
    folder.mkdir()
    (folder / "README.md").write_text("# qv\n")
    body = ('seeds = [0, 1]\nquick-variants = ["b"]\n[base]\ntask = "digits"\n'
            '[variants.a]\nalpha = 0.5\n[variants.b]\nalpha = 1.0\n[variants.c]\nalpha = 2.0\n')
    (folder / "benchmark.toml").write_text(body)
    bench = load_benchmark(folder)
    assert [r.variant for r in plan_runs(bench, quick=True)] == ["b"]
    assert [r.variant for r in plan_runs(bench)] == ["a", "b", "c", "a", "b", "c"]
    (folder / "benchmark.toml").write_text(body.replace('["b"]', '["zz"]'))
    with pytest.raises(BenchmarkError, match="unknown variant.*'zz'"):
        load_benchmark(folder)


def test_a_sweep_with_more_seeds_adopts_the_finished_runs_of_a_smaller_one(tmp_path,
                                                                          monkeypatch):
    """--seeds 1 then --seeds 2: the second sweep runs only seed 1, seed-major."""
    folder = write_bench(tmp_path / "smoke", SMOKE)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    calls: list[tuple[str, int]] = []

    def fake_child(run, bench_, parent, client, progress, verbose, resources=None,
                   shared_ray=None):
        from fedpers.tracking import Tracker
        tags = {TAG_PARENT: parent, TAG_BENCH: bench_.name, TAG_VARIANT: run.variant,
                TAG_SEED: str(run.seed), TAG_DIGEST: run.digest}
        tracker = Tracker.start(run.cfg.tracking_uri, run.cfg.experiment,
                                run_name=run.run_name, tags=tags)
        tracker.finish("FINISHED")
        calls.append((run.variant, run.seed))
        return tracker.run_id

    monkeypatch.setattr(bench_sweep, "_run_child", fake_child)
    first = bench_sweep.run_benchmark(folder, seeds=1, tracking_uri=uri, progress=False)
    assert calls == [("lr-a", 0), ("lr-b", 0)]
    calls.clear()
    second = bench_sweep.run_benchmark(folder, seeds=2, tracking_uri=uri, progress=False)
    assert second.parent_run_id != first.parent_run_id
    assert calls == [("lr-a", 1), ("lr-b", 1)]  # seed 0 is not run again
    assert set(second.reused) == set(first.ran)
    moved = _children(uri, second.parent_run_id)
    assert {(c.data.tags[TAG_VARIANT], c.data.tags[TAG_SEED]) for c in moved} == \
        {("lr-a", "0"), ("lr-b", "0"), ("lr-a", "1"), ("lr-b", "1")}
    assert _children(uri, first.parent_run_id) == []  # moved, not copied
    # a sweep of a changed config adopts nothing
    calls.clear()
    bench_sweep.run_benchmark(folder, seeds=1, rounds=1, tracking_uri=uri, progress=False)
    assert calls == [("lr-a", 0), ("lr-b", 0)]
