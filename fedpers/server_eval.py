"""The server's evaluation of a round: each selected client's own model on its local
test part (federated), and the global model on the held-out test set.

Functions of the round loop (``fedpers.server_loop.Experiment``): they read its
roster, grid, strategy, codec and global model, and keep the anomaly threshold.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ConfigRecord

from fedpers.arrays import to_array_record
from fedpers.compression import encode_broadcast
from fedpers.metrics import F1_GLOBAL_THRESHOLD, GLOBAL_THRESHOLD, summarize
from fedpers.roster import SelectedGrid
from fedpers.screening import RejectedReply, check_eval_reply, weighted_mean
from fedpers.seeds import Stream, derive_seed
from fedpers.training import evaluate

if TYPE_CHECKING:
    from fedpers.server_loop import Experiment, RoundLog

logger = logging.getLogger("fedpers")


def evaluate_round(loop: Experiment, rnd: int, out: RoundLog) -> None:
    cfg = loop.cfg
    available = loop.roster.partitions()
    num = max(1, int(round(cfg.fraction_evaluate * len(available))))
    rng = np.random.default_rng(derive_seed(cfg.seed, Stream.SELECT_EVAL, rnd))
    chosen = sorted(int(p) for p in rng.choice(available, size=num, replace=False))
    node_of = loop.roster.node_of()
    view = SelectedGrid(loop.grid, [node_of[p] for p in chosen])
    config = ConfigRecord()
    if loop.threshold is not None:
        # anomaly tasks: devices also report their F1 at the one global threshold
        config[GLOBAL_THRESHOLD] = float(loop.threshold)
    messages = list(loop.strategy.configure_evaluate(
        rnd, to_array_record(loop.global_arrays), config, view))
    encode_broadcast(messages, loop.codec_down,
                     np.random.default_rng(derive_seed(cfg.seed, Stream.BROADCAST_EVAL, rnd)))
    rows: list[dict[str, Any]] = []
    for reply in loop.send(messages):
        pid = loop.partition(reply)
        if reply.has_error():
            logger.warning("round %d: evaluation on client %d failed: %s", rnd, pid,
                           reply.error.reason)
            continue
        try:
            rows.append({"partition-id": pid, **check_eval_reply(reply)})
        except RejectedReply as exc:
            logger.warning("round %d: evaluation reply of client %d rejected: %s", rnd,
                           pid, exc)
    rows.sort(key=lambda r: r["partition-id"])
    out.client_rows = rows
    out.metrics["clients/evaluated"] = float(len(rows))
    for key in ("accuracy", "loss", "auroc", "f1", F1_GLOBAL_THRESHOLD):
        vals = [r[key] for r in rows if key in r]
        for stat, value in summarize(vals).items():
            out.metrics[f"eval/client_{key.replace('-', '_')}_{stat}"] = value
    if loop.fed.kind == "anomaly":
        thr = weighted_mean((r["threshold"], r["num-val"]) for r in rows
                            if "threshold" in r)
        if thr is not None:
            loop.threshold = thr
            out.metrics["eval/threshold"] = thr

def evaluate_global(loop: Experiment, out: RoundLog) -> None:
    loop.model.load_state_dict({k: torch.from_numpy(v) for k, v in
                                loop.global_arrays.items()})
    res = evaluate(loop.model, loop.fed.x_test, loop.fed.y_test, kind=loop.fed.kind,
                   device=loop.device, threshold=loop.threshold)
    for key, value in res.items():
        out.metrics[f"eval/global_{key}"] = value
