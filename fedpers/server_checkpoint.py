"""The round loop's side of checkpoint and resume (``fedpers.checkpoint`` holds the
file format and the store).

A checkpoint holds the ``state_dict()`` of every server component by name
(``Experiment.components()`` plus the loop's own state, :class:`LoopState`), walked
by ``fedpers.state``: a component that carries state without ``state_dict`` fails
the checkpoint instead of being left out. The clients save their own state to their
disks (``fedpers.client_state``); the checkpoint keeps each one's SHA-256. A function of
``fedpers.server_loop.Experiment`` (the round loop) and what it holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedpers import client_state
from fedpers.checkpoint import Checkpoint, CheckpointError
from fedpers.server_outputs import fmt_bytes
from fedpers.state import StateError, collect, restore

if TYPE_CHECKING:
    from fedpers.server_loop import Experiment

logger = logging.getLogger("fedpers")


class LoopState:
    """The round loop's own state: the global model, the anomaly threshold, the rounds
    aggregated so far (DP's releases) and the last client metrics."""

    def __init__(self, loop: Experiment) -> None:
        self.loop = loop

    def state_dict(self) -> dict[str, Any]:
        loop = self.loop
        return {"global": dict(loop.global_arrays), "threshold": loop.threshold,
                "aggregated": loop.aggregated, "last_clients": loop.last_clients}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        loop = self.loop
        saved = state["global"]
        model = {k: (v.shape, v.dtype) for k, v in loop.global_arrays.items()}
        if {k: (v.shape, v.dtype) for k, v in saved.items()} != model:
            raise CheckpointError("the checkpoint's model does not match this task's model")
        loop.global_arrays = {k: np.array(v) for k, v in saved.items()}
        loop.threshold = state["threshold"]
        loop.aggregated = int(state["aggregated"])
        loop.last_clients = list(state["last_clients"])


def checkpoint_components(loop: Experiment) -> dict[str, object]:
    return {"loop": LoopState(loop), **loop.components()}

def client_states(loop: Experiment, action: str, partitions: list[int],
                   config: Callable[[int], dict[str, Any]]) -> dict[int, Message]:
    """Send ``query.<action>`` (``fedpers.client_state``) with ``config(partition)``
    to ``partitions``; return the replies that succeeded, by partition. Not counted
    in ``comm/bytes_*``: checkpoint traffic is not part of the algorithm."""
    node_of = loop.roster.node_of()
    msgs = [Message(RecordDict({"config": ConfigRecord({"state-key": loop.tracker.run_id,
                                                        **config(p)})}),
                    dst_node_id=node_of[p], message_type=f"{MessageType.QUERY}.{action}")
            for p in partitions if p in node_of]
    ok: dict[int, Message] = {}
    for reply in loop.grid.send_and_receive(msgs, timeout=loop.cfg.round_timeout):
        pid = loop.partition(reply)
        if reply.has_error():
            logger.warning("client %d: %s of its state failed: %s", pid,
                           action.split("_")[0], reply.error.reason)
            continue
        ok[pid] = reply
    return ok

def save_checkpoint(loop: Experiment, rnd: int) -> None:
    """Clients write their state to their own disks, then the server's checkpoint
    (with their digests) goes to MLflow. A failure is logged; the run goes on."""
    replies = client_states(loop, client_state.SAVE, loop.roster.partitions(),
                                  lambda p: {"server-round": rnd,
                                             "keep-round": loop.saved_round})
    clients: dict[str, dict[str, Any]] = {}
    for pid, reply in sorted(replies.items()):
        info = reply.content.config_records.get("state")
        if info is None or "sha256" not in info:
            logger.warning("client %d: malformed reply to the state checkpoint", pid)
            continue
        clients[str(pid)] = {"sha256": str(info["sha256"]),
                             "bytes": int(info["bytes"])}  # type: ignore[arg-type]
    if not clients and loop.roster.partitions():
        # (a client with no state still saves, and answers, an empty one)
        logger.warning("round %d: no client saved its state; no checkpoint (the newest "
                       "is still round %d)", rnd, loop.saved_round)
        return
    try:
        loop.checkpoints.save(snapshot(loop, rnd, clients))
    except Exception as exc:  # noqa: BLE001 - training goes on without it
        logger.warning("round %d: checkpoint not stored (%s: %s); the newest is still "
                       "round %d", rnd, type(exc).__name__, exc, loop.saved_round)
        return
    if loop.tracker.buffering:
        # queued during a tracking outage: not in the store yet, so clients keep the
        # state of the newest stored checkpoint too
        logger.warning("round %d: checkpoint queued (the MLflow store is unreachable); "
                       "the newest stored one is still round %d", rnd, loop.saved_round)
        return
    loop.saved_round = rnd
    loop.unsaved_metrics = {}
    logger.info("round %d: checkpoint stored (%d clients saved their state, %s)", rnd,
                len(clients), fmt_bytes(sum(c["bytes"] for c in clients.values())))

def snapshot(loop: Experiment, rnd: int, clients: dict[str, dict[str, Any]]) -> Checkpoint:
    """Everything the round loop carries into round ``rnd + 1``."""
    meta = {"config": loop.cfg.to_dict(), "mlflow_run_id": loop.tracker.run_id,
            "metrics": {str(r): m for r, m in loop.unsaved_metrics.items()},
            "clients": clients}
    return Checkpoint.of_states(rnd, meta, collect(checkpoint_components(loop)))

def restore_checkpoint(loop: Experiment) -> None:
    """Resume: put the checkpoint's state back, on the server and on the clients."""
    ckpt = loop.resume
    if ckpt is None:
        return
    try:
        restore(checkpoint_components(loop), ckpt.states())
    except (StateError, KeyError) as exc:
        raise CheckpointError(f"the checkpoint of round {ckpt.round} cannot be "
                              f"restored: {exc}") from exc
    loop.start_round = loop.saved_round = ckpt.round
    clients = {int(p): c for p, c in ckpt.meta["clients"].items()}
    restored = client_states(loop, 
        client_state.LOAD, sorted(clients),
        lambda p: {"server-round": ckpt.round, "sha256": clients[p]["sha256"]})
    for pid in sorted(set(clients) - set(restored)):
        logger.warning("client %d did not get its checkpointed state back; it goes on "
                       "with a fresh state (as a client that never trained)", pid)
    logger.info("resumed from the checkpoint of round %d: %d of %d clients restored "
                "their state", ckpt.round, len(restored), len(clients))

def relog_missing(loop: Experiment) -> set[int]:
    """Resume: log the checkpoint's rounds that are missing from the run; return
    the rounds the run holds."""
    logged = loop.checkpoints.logged_rounds()
    if loop.resume is None:
        return logged
    for key, metrics in sorted(loop.resume.meta.get("metrics", {}).items(),
                               key=lambda kv: int(kv[0])):
        if int(key) not in logged:
            logger.info("round %d: its metrics were lost before the checkpoint; "
                        "logged from it now", int(key))
            loop.tracker.log_metrics(metrics, step=int(key))
            logged.add(int(key))
    return logged

def check_replay(loop: Experiment, rnd: int, metrics: dict[str, float]) -> None:
    """A round recomputed after a resume: the run already holds its metrics; they
    are not logged again, and must equal what was logged (runs are deterministic).
    A round in which no client trained before, and some do now, is logged again."""
    before = loop.checkpoints.logged_metrics(rnd, sorted(metrics))
    differ = sorted(k for k, v in metrics.items() if k in before and before[k] != v)
    if before.get("clients/trained") == 0 and metrics.get("clients/trained", 0) > 0:
        # no client trained in it before (they failed): what they did now counts
        logger.info("round %d: no client trained in it before the interruption; "
                    "logged again with this replay's metrics", rnd)
        loop.tracker.log_metrics(metrics, step=rnd)
    elif differ:
        logger.warning("round %d: replayed with metrics that differ from those logged "
                       "before the interruption (%s); is this the same software and "
                       "hardware?", rnd, ", ".join(differ))
    else:
        logger.info("round %d: replayed; its metrics were logged before the "
                    "interruption, identical, and are not logged again", rnd)
