"""Anomaly detection, personalised: each device's F1 with its own threshold and with
the server's one global threshold, reported side by side; fine-tuned autoencoders."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Context, RecordDict
from personal_helpers import call_eval

from fedpers.client_app import evaluate_local
from fedpers.config import parse_run_config
from fedpers.data import TASKS
from fedpers.metrics import F1_GLOBAL_THRESHOLD, GLOBAL_THRESHOLD
from fedpers.server_app import Experiment, RoundLog

pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app

CFG = {"task": "shuttle-ad", "num-clients": 3, "partition": "iid",
       "max-samples-per-client": 1500, "batch-size": 64}


def _context(personalization: str = "none", pid: int = 1) -> Context:
    cfg = parse_run_config({**CFG, "personalization": personalization}).to_dict()
    return Context(run_id=1, node_id=5, node_config={"partition-id": pid, "num-partitions": 3},
                   state=RecordDict(), run_config=cfg)


def _arrays():
    torch.manual_seed(0)
    model = TASKS["shuttle-ad"].build_model((9,), 2)
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_f1_at_the_global_threshold_is_reported_next_to_the_own_one():
    x0 = _arrays()
    ctx = _context()
    own = call_eval(ctx, x0, 1)
    assert {"f1", "auroc", "threshold", "num-val"} <= set(own)
    assert F1_GLOBAL_THRESHOLD not in own  # no global threshold yet (first evaluation)
    same = call_eval(ctx, x0, 2, {GLOBAL_THRESHOLD: own["threshold"]})
    assert same[F1_GLOBAL_THRESHOLD] == pytest.approx(same["f1"])
    huge = call_eval(ctx, x0, 2, {GLOBAL_THRESHOLD: 1e9})
    assert huge[F1_GLOBAL_THRESHOLD] == 0.0 and huge["f1"] == pytest.approx(own["f1"])


def test_finetuned_autoencoder_calibrates_its_own_threshold():
    x0 = _arrays()
    plain = call_eval(_context("none"), x0, 1)
    tuned = call_eval(_context("finetune"), x0, 1)
    assert tuned["threshold"] != plain["threshold"]
    assert tuned["loss"] < plain["loss"]  # one epoch on its normal rows lowers the error


class InProcessGrid:
    """Delivers each message to the real ClientApp handler of its node, in process."""

    def __init__(self, contexts: dict[int, Context]) -> None:
        self.contexts = contexts
        self.sent = []

    def get_node_ids(self):
        return sorted(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        self.sent += list(messages)
        return [evaluate_local(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


def test_the_server_sends_its_threshold_and_logs_both_f1s():
    cfg = parse_run_config(CFG)
    contexts = {10 + pid: _context(pid=pid) for pid in range(3)}
    grid = InProcessGrid(contexts)
    exp = Experiment(cfg, grid, tracker=None)
    exp.roster.partition_of = {node: node - 10 for node in contexts}
    first = RoundLog()
    exp.evaluate_round(1, first)
    assert "eval/client_f1_mean" in first.metrics
    assert "eval/client_f1_global_threshold_mean" not in first.metrics
    threshold = exp.threshold
    assert threshold == pytest.approx(first.metrics["eval/threshold"])
    assert all(GLOBAL_THRESHOLD not in m.content["config"] for m in grid.sent)
    second = RoundLog()
    exp.evaluate_round(2, second)
    sent = [dict(m.content["config"]) for m in grid.sent[3:]]
    assert len(sent) == 3 and all(c[GLOBAL_THRESHOLD] == threshold for c in sent)
    for stat in ("mean", "std", "p10", "min"):
        assert f"eval/client_f1_global_threshold_{stat}" in second.metrics
        assert f"eval/client_f1_{stat}" in second.metrics
    rows = second.client_rows
    assert len(rows) == 3 and all(F1_GLOBAL_THRESHOLD in r for r in rows)
    assert second.metrics["eval/client_f1_global_threshold_min"] == pytest.approx(
        min(r[F1_GLOBAL_THRESHOLD] for r in rows))
