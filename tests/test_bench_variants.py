"""``fedpers bench --variants``: a sweep of a subset of a benchmark's variants."""

from __future__ import annotations

import pytest

from fedpers.bench_definition import BenchmarkError, load_benchmark
from fedpers.bench_plan import plan_runs, sweep_hash

FOLDER = "benchmarks/personalization"


def test_globs_keep_the_matching_variants_in_file_order():
    bench = load_benchmark(FOLDER)
    runs = plan_runs(bench, seeds=5, variants=("local-a0.1", "*-a5.0", "fedrep-a0.1"))
    names = list(dict.fromkeys(r.variant for r in runs))
    assert names == [v.name for v in bench.variants
                     if v.name in {"local-a0.1", "fedrep-a0.1"} or v.name.endswith("-a5.0")]
    assert names[:2] == ["local-a0.1", "fedrep-a0.1"]  # the file's order, not the globs'
    assert {r.seed for r in runs} == {0, 1, 2, 3, 4}
    assert len(runs) == 5 * len(names)


def test_a_subset_runs_the_same_configs_as_the_full_sweep():
    bench = load_benchmark(FOLDER)
    full = {(r.variant, r.seed): r.digest for r in plan_runs(bench)}
    part = plan_runs(bench, variants=("ditto-*",))
    assert part and all(full[(r.variant, r.seed)] == r.digest for r in part)
    # a sweep of its own: another parent run, whose finished runs a full sweep adopts
    assert sweep_hash(bench, part) != sweep_hash(bench, plan_runs(bench))


def test_a_glob_that_matches_nothing_lists_the_variants():
    bench = load_benchmark(FOLDER)
    with pytest.raises(BenchmarkError, match=r"'nope\*' match no variant .*variants: none-a0.1, "):
        plan_runs(bench, variants=("none-a0.1", "nope*"))


def test_quick_with_variants_runs_the_named_ones_not_the_quick_list():
    bench = load_benchmark(FOLDER)
    runs = plan_runs(bench, quick=True, variants=("local-a5.0",))
    assert [(r.variant, r.seed) for r in runs] == [("local-a5.0", 0)]
