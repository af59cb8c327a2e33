"""How a benchmark sweep is recorded in MLflow: the tags and the queries that use them.

The tags are the contract between ``fedpers bench`` (:mod:`fedpers.bench_sweep`),
which writes them on the parent run and its child runs, and ``fedpers report``
(:mod:`fedpers.report_data`), which reads them back.
"""

from __future__ import annotations

from typing import Any

TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_BENCH = "fedpers.bench.name"
TAG_HASH = "fedpers.bench.hash"
TAG_VARIANTS = "fedpers.bench.variants"
TAG_SEEDS = "fedpers.bench.seeds"
TAG_TARGET = "fedpers.bench.target_accuracy"
TAG_QUICK = "fedpers.bench.quick"
TAG_VARIANT = "fedpers.bench.variant"
TAG_SEED = "fedpers.bench.seed"
TAG_DIGEST = "fedpers.config_digest"
TAG_REFERENCES = "fedpers.bench.references"  # JSON: variant -> its reference variant
TAG_REFERENCE_FRACTION = "fedpers.bench.reference_fraction"
# The parent's description in MLflow's UI (Markdown): what the sweep runs and how far
# it got; ``fedpers report`` replaces it with the summary table and the verdicts.
TAG_NOTE = "mlflow.note.content"
SWEEP_NOTE_HEAD = "Benchmark sweep "


def quote_tag(value: str) -> str:
    """``value`` inside a single-quoted MLflow search string."""
    return value.replace("'", "\\'")


def find_parent(client: Any, experiment_id: str, name: str, digest: str) -> str | None:
    """The most recent parent run of this benchmark + sweep hash, if any."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_BENCH}` = '{quote_tag(name)}' and "
                      f"tags.`{TAG_HASH}` = '{digest}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def child_runs(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    """Every child of ``parent_id`` (any status), oldest first."""
    return list(client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_id}'",
        order_by=["attributes.start_time ASC"], max_results=10_000))
