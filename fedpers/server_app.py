"""The ServerApp: one round loop for every strategy, selector, codec and task.

Each round: select clients (seeded) -> ``strategy.configure_train`` on a grid view
that shows only them -> send, count bytes both ways -> check every reply (errors
and time-outs are *failed*, malformed updates are *rejected*; neither is
averaged in) -> robust aggregation (``fedpers.robust``) and, with ``dp``, DP-FedAvg's
noised average (``fedpers.privacy``) -> ``strategy.aggregate_train`` -> federated
evaluation of each client's own model on its local test part -> the global model on
the held-out test set -> one batched MLflow write.

With a device profile (``device-profile``), ``fedpers.participation`` puts training
on a simulated clock: only clients online in the round are selectable, mid-round
dropouts and clients past ``round-deadline`` are *dropped*, and each round's
simulated duration is logged.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from threadpoolctl import threadpool_limits

from clients import PERSONALIZERS
from fedpers import client_state, engine
from fedpers import metrics as fm
from fedpers.arrays import record_to_numpy, to_array_record
from fedpers.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    restore_strategy_state,
    strategy_state,
)
from fedpers.codecs import build_codec
from fedpers.comm import ByteCounter, ReplySizes, content_bytes, messages_bytes
from fedpers.compression import UploadStats, encode_broadcast
from fedpers.config import ConfigError, RunConfig, clients_per_round, parse_run_config
from fedpers.data import TASKS, DataSpec, FederatedData, load_federated
from fedpers.heap import frozen_heap
from fedpers.interrupt import RunInterrupted, StoppableGrid, check, note_interrupted
from fedpers.participation import Participation
from fedpers.privacy import build_privacy
from fedpers.robust import STEPS, RobustLayer
from fedpers.rounds import (
    REJECT_REASONS,
    CheckedReply,
    RejectedReply,
    Roster,
    SelectedGrid,
    check_eval_reply,
    clean_reply,
    consistent_key_sets,
    refresh_roster,
    screen_train_reply,
    wait_for_nodes,
    weighted_mean,
)
from fedpers.run_params import applicable_params, bookkeeping_tags
from fedpers.seeds import Stream, derive_seed
from fedpers.selection import ClientRecord, build_selector
from fedpers.tracking import Tracker
from fedpers.training import evaluate, resolve_device
from fedpers.virtual import VirtualGrid, remove_states, virtual_roster_entries
from strategies import STRATEGIES

logger = logging.getLogger("fedpers")

# Clients' first reply includes process start-up and data loading: give the handshake
# at least this long even when round-timeout is short.
MIN_HANDSHAKE_TIMEOUT = 120.0
# a run fails after this many rounds in a row in which every client the round sent
# work to failed or timed out (see Experiment.run)
MAX_FAILED_ROUNDS = 3


def _ensure_logging() -> None:
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s fedpers %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


@dataclass
class RejectReasons:
    """Which ``clients/rejected_<reason>`` counters a run logs: a reason from the first
    round in which an update is rejected for it, then every round (a chart falls back
    to 0, and the run's latest value is that of its last round). A run with no
    rejections logs only the total ``clients/rejected``."""

    seen: set[str] = field(default_factory=set)

    def metrics(self, counts: dict[str, int]) -> dict[str, float]:
        """The counters of this round's ``counts`` (reason -> updates) to log."""
        self.seen.update(why for why, n in counts.items() if n)
        return {f"{REJECTED_PREFIX}{why}": float(n) for why, n in counts.items()
                if why in self.seen}

    def restore(self, logged_keys: Iterable[str]) -> None:
        """Resume: the reasons the run logged before (its metric keys)."""
        self.seen.update(k[len(REJECTED_PREFIX):] for k in logged_keys
                         if k.startswith(REJECTED_PREFIX))


REJECTED_PREFIX = "clients/rejected_"


@dataclass
class RoundLog:
    """What one round produced; ``metrics`` is what MLflow gets."""

    metrics: dict[str, float] = field(default_factory=dict)
    client_rows: list[dict[str, Any]] = field(default_factory=list)
    # the round updated the global model (at least min-train-clients valid updates)
    aggregated: bool = False
    # the round sent work to clients and every one of them failed or timed out
    all_failed: bool = False


def _fmt_bytes(n: float) -> str:
    """Decimal units (1 kB = 1000 B), as in ``fedpers report``."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


class Experiment:
    """State of one federated run on the server."""

    def __init__(self, cfg: RunConfig, grid: Grid, tracker: Tracker,
                 resume: Checkpoint | None = None) -> None:
        self.cfg = cfg
        self.grid = grid
        self.tracker = tracker
        self.task = TASKS[cfg.task]
        self.fed: FederatedData = load_federated(DataSpec.from_config(cfg))
        self.device = resolve_device(cfg.device)
        spec = STRATEGIES[cfg.strategy]
        self.strategy = spec.build(cfg)
        self.extra_records = spec.extra_records
        # issue 8: clipping + robust aggregation before the strategy's own step
        self.robust = RobustLayer(cfg, spec.normalises_steps)
        self.required_metrics = (STEPS,) if spec.normalises_steps else ()
        # issue 8: DP-FedAvg's noised average and its accountant (fedpers.privacy)
        self.privacy = build_privacy(cfg)
        self.selector = build_selector(cfg)
        self.codec = build_codec(cfg)
        self.codec_down = build_codec(cfg, cfg.codec_down)
        self.bytes = ByteCounter()
        self.roster = Roster()
        torch.manual_seed(derive_seed(cfg.seed, Stream.MODEL_INIT))
        self.model = self.task.build_model(self.fed.input_shape, self.fed.num_classes)
        # what stays on the clients; raises now, not in every client, when the
        # personaliser cannot work with this model (e.g. fedbn without norm layers)
        self.private_keys = sorted(PERSONALIZERS[cfg.personalization].private_keys(self.model))
        self.global_arrays = {k: v.detach().cpu().numpy().copy()
                              for k, v in self.model.state_dict().items()}
        # selection statistics and the simulated clock (issue 7, fedpers.participation)
        model_bytes = content_bytes(RecordDict({"arrays": to_array_record(self.global_arrays)}))
        self.participation = Participation(cfg, self.roster,
                                           model_bytes * (1 + len(self.extra_records)),
                                           spec.partial_work)
        self.handshake_timeout = max(cfg.round_timeout, MIN_HANDSHAKE_TIMEOUT)
        self.threshold: float | None = None
        self.last_clients: list[dict[str, Any]] = []
        # checkpoint and resume (issue 8, fedpers.checkpoint, fedpers.client_state)
        self.strategy_attrs = spec.state
        self.checkpoints = CheckpointStore(tracker)
        self.resume = resume
        self.start_round = 0  # rounds done before this process (resume)
        self.saved_round = 0  # the newest stored checkpoint
        self.aggregated = 0  # rounds that aggregated client updates
        # metrics of the rounds since the newest checkpoint: a checkpoint carries them,
        # so that a resumed run logs any a crash (or a tracking outage) lost
        self.unsaved_metrics: dict[int, dict[str, float]] = {}
        self.failed_rounds = 0  # rounds in a row in which every client failed
        self.done_round = 0  # the last round logged (or replayed)
        # clients/rejected_<reason>: logged from the first round a reason occurs
        self.reject_reasons = RejectReasons()

    # ------------------------------------------------------------ one round
    def _send(self, messages: list[Message], count_up: bool = True,
              sizes: ReplySizes | None = None) -> list[Message]:
        self.bytes.add_down(messages_bytes(messages))
        replies = list(self.grid.send_and_receive(messages, timeout=self.cfg.round_timeout))
        if count_up:
            self.bytes.add_up((sizes or ReplySizes()).total(replies))
        return replies

    def _partition(self, reply: Message) -> int:
        return self.roster.partition_of.get(reply.metadata.src_node_id, -1)

    def train_round(self, rnd: int, out: RoundLog) -> None:
        cfg = self.cfg
        refresh_roster(self.grid, self.roster, cfg.num_clients, self.handshake_timeout)
        part = self.participation
        available = part.candidates(rnd, self.roster.partitions())  # online ones
        num = clients_per_round(cfg)[0]
        rng = np.random.default_rng(derive_seed(cfg.seed, Stream.SELECT_TRAIN, rnd))
        chosen = self.selector.select(rnd, available, num, rng, part.stats)
        out.metrics["fairness/jain_selection"] = part.note_selected(rnd, chosen)
        node_of = self.roster.node_of()
        view = SelectedGrid(self.grid, [node_of[p] for p in chosen])
        messages = list(self.strategy.configure_train(
            rnd, to_array_record(self.global_arrays), ConfigRecord(), view)) if chosen else []
        encode_broadcast(messages, self.codec_down,
                         np.random.default_rng(derive_seed(cfg.seed, Stream.BROADCAST_TRAIN, rnd)))
        # the simulated clock: mid-round dropouts get the model but never reply
        to_send, gone = part.start(rnd, messages)
        self.bytes.add_down(messages_bytes(gone))
        sizes = ReplySizes()  # each reply is sized once (bytes, clock, compression ratio)
        replies = (self._send(to_send, count_up=part.clock is None, sizes=sizes)
                   if to_send else [])
        late = part.finish(rnd, replies, sizes)  # past the round deadline: dropped
        if part.clock is not None:  # a late upload is abandoned at the deadline
            self.bytes.add_up(sizes.total([r for r in replies
                                           if self._partition(r) not in late]))
        failed = len(to_send) - len(replies)
        checked: list[tuple[CheckedReply, Message]] = []
        rejected = dict.fromkeys(REJECT_REASONS, 0)  # by reason
        upload = UploadStats(self.codec.lossy)
        for reply in replies:
            pid = self._partition(reply)
            if reply.has_error():
                failed += 1
                logger.warning("round %d: client %d failed: %s", rnd, pid, reply.error.reason)
                continue
            if pid in late:
                continue
            try:
                c = screen_train_reply(reply, self.global_arrays, self.codec,
                                       self.extra_records, cfg.max_update_norm, pid,
                                       self.required_metrics,
                                       self.roster.num_examples.get(pid, 0))
            except RejectedReply as exc:
                rejected[exc.reason] += 1
                logger.warning("round %d: update from client %d rejected (%s): %s", rnd, pid,
                               exc.reason, exc)
                continue
            checked.append((c, reply))
            upload.add(reply, c.arrays, c.metrics, c.extra, sizes)
        keep, drop = consistent_key_sets([c for c, _ in checked])
        for c in drop:
            rejected["keys"] += 1
            logger.warning("round %d: update from client %d rejected: its parameter names "
                           "differ from the other clients'", rnd, c.partition_id)
        kept_ids = {id(c) for c in keep}
        valid = sorted(((c, r) for c, r in checked if id(c) in kept_ids),
                       key=lambda cr: cr[0].partition_id)
        out.metrics.update({"clients/selected": float(len(messages)),
                            "clients/trained": float(len(valid)),
                            "clients/failed": float(failed),
                            "clients/rejected": float(sum(rejected.values()))})
        out.metrics.update(self.reject_reasons.metrics(rejected))
        norms = [c.norm for c, _ in valid]  # measured by the screening
        if norms:
            out.metrics["clients/update_norm_median"] = float(np.median(norms))
            out.metrics["clients/update_norm_max"] = float(np.max(norms))
        out.metrics.update(upload.metrics())
        out.metrics.update(part.metrics())
        part.note_trained((c.partition_id, c.metrics) for c, _ in valid)
        out.all_failed = bool(to_send) and failed == len(to_send)
        if len(valid) < cfg.min_train_clients:
            logger.warning("round %d: only %d valid updates (min-train-clients = %d); the "
                           "global model is not updated", rnd, len(valid),
                           cfg.min_train_clients)
            return
        robust = self.robust.apply([c for c, _ in valid], self.global_arrays)
        out.metrics.update(robust.metrics)
        passed = robust.passed
        if self.privacy is not None:  # issue 8: every update becomes the noised average
            dp = self.privacy.server.apply(rnd, passed, self.global_arrays, len(messages))
            passed = dp.passed
            out.metrics.update(dp.metrics)
        agg_arrays, _ = self.strategy.aggregate_train(
            rnd, [clean_reply(valid[i][1], c) for i, c in passed])
        if agg_arrays is not None:
            for name, arr in record_to_numpy(agg_arrays).items():
                self.global_arrays[name] = arr.astype(self.global_arrays[name].dtype,
                                                      copy=False)
        loss = weighted_mean((c.metrics["train-loss"], c.metrics["num-examples"])
                             for c, _ in valid if "train-loss" in c.metrics)
        if loss is not None:
            out.metrics["train/loss"] = loss
        out.aggregated = True

    def evaluate_round(self, rnd: int, out: RoundLog) -> None:
        cfg = self.cfg
        available = self.roster.partitions()
        num = max(1, int(round(cfg.fraction_evaluate * len(available))))
        rng = np.random.default_rng(derive_seed(cfg.seed, Stream.SELECT_EVAL, rnd))
        chosen = sorted(int(p) for p in rng.choice(available, size=num, replace=False))
        node_of = self.roster.node_of()
        view = SelectedGrid(self.grid, [node_of[p] for p in chosen])
        config = ConfigRecord()
        if self.threshold is not None:
            # anomaly tasks: devices also report their F1 at the one global threshold
            config[fm.GLOBAL_THRESHOLD] = float(self.threshold)
        messages = list(self.strategy.configure_evaluate(
            rnd, to_array_record(self.global_arrays), config, view))
        encode_broadcast(messages, self.codec_down,
                         np.random.default_rng(derive_seed(cfg.seed, Stream.BROADCAST_EVAL, rnd)))
        rows: list[dict[str, Any]] = []
        for reply in self._send(messages):
            pid = self._partition(reply)
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
        for key in ("accuracy", "loss", "auroc", "f1", fm.F1_GLOBAL_THRESHOLD):
            vals = [r[key] for r in rows if key in r]
            for stat, value in fm.summarize(vals).items():
                out.metrics[f"eval/client_{key.replace('-', '_')}_{stat}"] = value
        if self.fed.kind == "anomaly":
            thr = weighted_mean((r["threshold"], r["num-val"]) for r in rows
                                if "threshold" in r)
            if thr is not None:
                self.threshold = thr
                out.metrics["eval/threshold"] = thr

    def evaluate_global(self, out: RoundLog) -> None:
        self.model.load_state_dict({k: torch.from_numpy(v) for k, v in
                                    self.global_arrays.items()})
        res = evaluate(self.model, self.fed.x_test, self.fed.y_test, kind=self.fed.kind,
                       device=self.device, threshold=self.threshold)
        for key, value in res.items():
            out.metrics[f"eval/global_{key}"] = value

    # ------------------------------------------------------------ the run
    def run(self) -> None:
        """The whole run; on a stop request (``fedpers.interrupt``) the round in
        progress is dropped and :class:`RunInterrupted` says what is kept."""
        try:
            self._run()
        except RunInterrupted as exc:
            exc.run_id = self.tracker.run_id
            exc.last_round = self.done_round
            exc.checkpoint_round = max(self.saved_round,
                                       self.resume.round if self.resume is not None else 0)
            logger.warning("%s: the round in progress is dropped (the newest checkpoint is "
                           "round %d)", exc, exc.checkpoint_round)
            raise

    def _run(self) -> None:
        cfg = self.cfg
        _ensure_logging()
        if isinstance(self.grid, VirtualGrid):  # issue 9: no handshake, see _virtual_roster
            nodes = self._virtual_roster()
        else:
            nodes = wait_for_nodes(self.grid, cfg.num_clients, self.handshake_timeout)
            refresh_roster(self.grid, self.roster, cfg.num_clients, self.handshake_timeout)
        if not self.roster.partition_of:
            raise RuntimeError(f"no client answered the handshake ({len(nodes)} nodes "
                               f"connected); nothing to train")
        if len(self.roster.partition_of) < cfg.num_clients:
            logger.warning("only %d of %d clients connected; training with those",
                           len(self.roster.partition_of), cfg.num_clients)
        n_params = sum(v.size for v in self.global_arrays.values())
        logger.info("task %s: %d clients, %d model parameters, strategy %s, selection %s, "
                    "codec %s, personalization %s", cfg.task, len(self.roster.partition_of),
                    n_params, cfg.strategy, cfg.selection, cfg.codec, cfg.personalization)
        self._restore()
        # rounds replayed after a crash whose metrics were already logged: not again
        logged = self._relog_missing() if self.resume is not None else set()
        self.done_round = self.start_round
        for rnd in range(self.start_round + 1, cfg.num_server_rounds + 1):
            check(f"before round {rnd}")
            self._round(rnd, logged)
        self._log_artifacts()
        if cfg.checkpoint_every or self.resume is not None:
            self._client_states(client_state.DROP, self.roster.partitions(), lambda p: {})
        if self.aggregated == 0:
            raise RuntimeError(f"no round aggregated any client update ({cfg.num_server_rounds} "
                               f"rounds); every round's metrics are logged, the run is FAILED")

    def _round(self, rnd: int, logged: set[int]) -> None:
        """One round: train, evaluate, log, checkpoint.

        A round in which no client trained (no valid update: every client failed, timed
        out, was rejected or dropped out) changed no model, the global one nor any
        client's: it is not evaluated, and logs only what it cost and who took part
        (``clients/*``, ``comm/*``, ``fairness/*``, the simulated clock), never
        ``eval/*`` or ``train/*``. (A round with valid updates, but fewer than
        ``min-train-clients``, keeps the global model too, yet is evaluated: clients
        that trained may have changed their own models.) After ``MAX_FAILED_ROUNDS``
        rounds in a row in which every client the round sent work to failed or timed out
        (errors, ``round-timeout``), the run fails with a ``RuntimeError``.
        """
        cfg = self.cfg
        t0 = time.perf_counter()
        out = RoundLog()
        self.bytes.start_round()
        self.train_round(rnd, out)
        if self.privacy is not None:  # the DP budget spent, this round included
            out.metrics.update(self.privacy.metrics(self.aggregated + int(out.aggregated)))
        trained = out.metrics.get("clients/trained", 0) > 0
        if trained and (rnd % cfg.eval_every == 0 or rnd == cfg.num_server_rounds):
            self.evaluate_round(rnd, out)
            self.evaluate_global(out)
            self.last_clients = out.client_rows or self.last_clients
        out.metrics.update(self.bytes.metrics())
        check(f"in round {rnd}")  # a stop request drops the round: nothing logged
        if rnd not in logged:
            self.tracker.log_metrics(out.metrics, step=rnd)
        else:
            self._check_replay(rnd, out.metrics)
        self.unsaved_metrics[rnd] = dict(out.metrics)
        self.done_round = rnd
        self._progress(rnd, out.metrics, time.perf_counter() - t0)
        self.aggregated += int(out.aggregated)
        self.failed_rounds = self.failed_rounds + 1 if out.all_failed else 0
        if self.failed_rounds >= MAX_FAILED_ROUNDS:
            raise RuntimeError(
                f"rounds {rnd - self.failed_rounds + 1}-{rnd}: every client failed or timed "
                f"out (round-timeout = {cfg.round_timeout:g} s), {self.failed_rounds} rounds "
                f"in a row; the run is FAILED ("
                + (f"fix the clients, then resume it from its checkpoint of round "
                   f"{self.saved_round}: fedpers run --resume {self.tracker.run_id})"
                   if self.saved_round else "and has no checkpoint to resume from)"))
        if cfg.checkpoint_every and rnd % cfg.checkpoint_every == 0 \
                and rnd < cfg.num_server_rounds:
            check(f"before the checkpoint of round {rnd}")
            self._checkpoint(rnd)

    def _virtual_roster(self) -> list[int]:
        """``virtual-nodes``: every client is in the roster from the start, with the
        size of its training set from the data this (simulation) process loaded: what
        the handshake would have learnt, without a message to each of them. Waits for
        the real SuperNodes; returns their ids."""
        nodes = wait_for_nodes(self.grid.inner, self.cfg.virtual_nodes, self.handshake_timeout)
        partition_of, num_examples = virtual_roster_entries(
            {p: c.num_train for p, c in enumerate(self.fed.clients)})
        self.roster.partition_of.update(partition_of)
        self.roster.num_examples.update(num_examples)
        logger.info("virtual clients: %d SuperNode(s) serve %d clients", len(nodes),
                    len(partition_of))
        return nodes

    # ------------------------------------------------------------ checkpoints
    def _client_states(self, action: str, partitions: list[int],
                       config: Callable[[int], dict[str, Any]]) -> dict[int, Message]:
        """Send ``query.<action>`` (``fedpers.client_state``) with ``config(partition)``
        to ``partitions``; return the replies that succeeded, by partition. Not counted
        in ``comm/bytes_*``: checkpoint traffic is not part of the algorithm."""
        node_of = self.roster.node_of()
        msgs = [Message(RecordDict({"config": ConfigRecord({"state-key": self.tracker.run_id,
                                                            **config(p)})}),
                        dst_node_id=node_of[p], message_type=f"{MessageType.QUERY}.{action}")
                for p in partitions if p in node_of]
        ok: dict[int, Message] = {}
        for reply in self.grid.send_and_receive(msgs, timeout=self.cfg.round_timeout):
            pid = self._partition(reply)
            if reply.has_error():
                logger.warning("client %d: %s of its state failed: %s", pid,
                               action.split("_")[0], reply.error.reason)
                continue
            ok[pid] = reply
        return ok

    def _checkpoint(self, rnd: int) -> None:
        """Clients write their state to their own disks, then the server's checkpoint
        (with their digests) goes to MLflow. A failure is logged; the run goes on."""
        replies = self._client_states(client_state.SAVE, self.roster.partitions(),
                                      lambda p: {"server-round": rnd,
                                                 "keep-round": self.saved_round})
        clients = {}
        for pid, reply in sorted(replies.items()):
            info = reply.content.config_records.get("state")
            if info is None or "sha256" not in info:
                logger.warning("client %d: malformed reply to the state checkpoint", pid)
                continue
            clients[str(pid)] = {"sha256": str(info["sha256"]), "bytes": int(info["bytes"])}
        if not clients and self.roster.partitions():
            # (a client with no state still saves, and answers, an empty one)
            logger.warning("round %d: no client saved its state; no checkpoint (the newest "
                           "is still round %d)", rnd, self.saved_round)
            return
        try:
            self.checkpoints.save(self._snapshot(rnd, clients))
        except Exception as exc:  # noqa: BLE001 - training goes on without it
            logger.warning("round %d: checkpoint not stored (%s: %s); the newest is still "
                           "round %d", rnd, type(exc).__name__, exc, self.saved_round)
            return
        if self.tracker.buffering:
            # queued during a tracking outage: not in the store yet, so clients keep the
            # state of the newest stored checkpoint too
            logger.warning("round %d: checkpoint queued (the MLflow store is unreachable); "
                           "the newest stored one is still round %d", rnd, self.saved_round)
            return
        self.saved_round = rnd
        self.unsaved_metrics = {}
        logger.info("round %d: checkpoint stored (%d clients saved their state, %s)", rnd,
                    len(clients), _fmt_bytes(sum(c["bytes"] for c in clients.values())))

    def _snapshot(self, rnd: int, clients: dict[str, dict[str, Any]]) -> Checkpoint:
        """Everything the round loop carries into round ``rnd + 1``."""
        strat_meta, arrays = strategy_state(self.strategy, self.strategy_attrs)
        arrays.update({f"global/{k}": v for k, v in self.global_arrays.items()})
        clock = self.participation.clock
        meta = {
            "config": self.cfg.to_dict(),
            "mlflow_run_id": self.tracker.run_id,
            "strategy": strat_meta,
            "threshold": self.threshold,
            "aggregated": self.aggregated,
            "bytes": {"up_total": self.bytes.up_total, "down_total": self.bytes.down_total},
            "selection": {str(p): dataclasses.asdict(r)
                          for p, r in self.participation.stats.clients.items()},
            "clock": None if clock is None else {
                "total_s": clock.total_s,
                "last_bytes": {str(p): list(b) for p, b in clock.last_bytes.items()}},
            "last_clients": self.last_clients,
            "metrics": {str(r): m for r, m in self.unsaved_metrics.items()},
            "clients": clients,
        }
        return Checkpoint(round=rnd, meta=meta, arrays=arrays)

    def _restore(self) -> None:
        """Resume: put the checkpoint's state back, on the server and on the clients."""
        ckpt = self.resume
        if ckpt is None:
            return
        meta = ckpt.meta
        saved = {k[len("global/"):]: v for k, v in ckpt.arrays.items() if k.startswith("global/")}
        model = {k: (v.shape, v.dtype) for k, v in self.global_arrays.items()}
        if {k: (v.shape, v.dtype) for k, v in saved.items()} != model:
            raise CheckpointError(f"the checkpoint's model (round {ckpt.round}) does not "
                                  f"match this task's model")
        self.global_arrays = {k: np.array(v) for k, v in saved.items()}
        restore_strategy_state(self.strategy, self.strategy_attrs, meta["strategy"],
                               ckpt.arrays)
        self.threshold = meta["threshold"]
        self.aggregated = int(meta["aggregated"])
        self.bytes.up_total = int(meta["bytes"]["up_total"])
        self.bytes.down_total = int(meta["bytes"]["down_total"])
        self.participation.stats.clients = {int(p): ClientRecord(**r)
                                            for p, r in meta["selection"].items()}
        clock = self.participation.clock
        if clock is not None and meta["clock"] is not None:
            clock.total_s = float(meta["clock"]["total_s"])
            clock.last_bytes = {int(p): (int(b[0]), int(b[1]))
                                for p, b in meta["clock"]["last_bytes"].items()}
        self.last_clients = list(meta["last_clients"])
        self.reject_reasons.restore(
            self.tracker.client.get_run(self.tracker.run_id).data.metrics)
        self.start_round = self.saved_round = ckpt.round
        clients = {int(p): c for p, c in meta["clients"].items()}
        restored = self._client_states(
            client_state.LOAD, sorted(clients),
            lambda p: {"server-round": ckpt.round, "sha256": clients[p]["sha256"]})
        for pid in sorted(set(clients) - set(restored)):
            logger.warning("client %d did not get its checkpointed state back; it goes on "
                           "with a fresh state (as a client that never trained)", pid)
        logger.info("resumed from the checkpoint of round %d: %d of %d clients restored "
                    "their state", ckpt.round, len(restored), len(clients))

    def _relog_missing(self) -> set[int]:
        """Resume: log the checkpoint's rounds that are missing from the run; return
        the rounds the run holds."""
        logged = self.checkpoints.logged_rounds()
        for key, metrics in sorted(self.resume.meta.get("metrics", {}).items(),
                                   key=lambda kv: int(kv[0])):
            if int(key) not in logged:
                logger.info("round %d: its metrics were lost before the checkpoint; "
                            "logged from it now", int(key))
                self.tracker.log_metrics(metrics, step=int(key))
                logged.add(int(key))
        return logged

    def _check_replay(self, rnd: int, metrics: dict[str, float]) -> None:
        """A round recomputed after a resume: the run already holds its metrics; they
        are not logged again, and must equal what was logged (runs are deterministic).
        A round in which no client trained before, and some do now, is logged again."""
        before = self.checkpoints.logged_metrics(rnd, sorted(metrics))
        differ = sorted(k for k, v in metrics.items() if k in before and before[k] != v)
        if before.get("clients/trained") == 0 and metrics.get("clients/trained", 0) > 0:
            # no client trained in it before (they failed): what they did now counts
            logger.info("round %d: no client trained in it before the interruption; "
                        "logged again with this replay's metrics", rnd)
            self.tracker.log_metrics(metrics, step=rnd)
        elif differ:
            logger.warning("round %d: replayed with metrics that differ from those logged "
                           "before the interruption (%s); is this the same software and "
                           "hardware?", rnd, ", ".join(differ))
        else:
            logger.info("round %d: replayed; its metrics were logged before the "
                        "interruption, identical, and are not logged again", rnd)

    def _progress(self, rnd: int, m: dict[str, float], seconds: float) -> None:
        parts = [f"round {rnd}/{self.cfg.num_server_rounds}"]
        if "eval/global_accuracy" in m:
            parts.append(f"global acc {m['eval/global_accuracy']:.4f}")
        if "eval/global_auroc" in m:
            parts.append(f"global AUROC {m['eval/global_auroc']:.4f}")
        if "eval/client_accuracy_mean" in m:
            parts.append(f"client acc {m['eval/client_accuracy_mean']:.4f}"
                         f"±{m['eval/client_accuracy_std']:.4f}")
        if "train/loss" in m:
            parts.append(f"loss {m['train/loss']:.4f}")
        parts.append(f"clients {m.get('clients/trained', 0):.0f} ok "
                     f"{m.get('clients/failed', 0):.0f} failed "
                     f"{m.get('clients/rejected', 0):.0f} rejected")
        parts.append(f"up {_fmt_bytes(m['comm/bytes_up'])} "
                     f"down {_fmt_bytes(m['comm/bytes_down'])}")
        if "time/round_s" in m:  # the simulated clock (device-profile)
            parts.append(f"simulated {m['time/round_s']:.1f}s (total {m['time/total_s']:.0f}s, "
                         f"{m['clients/dropped']:.0f} dropped)")
        parts.append(f"{seconds:.1f}s")
        logger.info(" | ".join(parts))

    def _log_artifacts(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2,
                                                      sort_keys=True))
            self.tracker.log_file(d / "config.json")
            model_dir = d / "model"
            model_dir.mkdir()
            torch.save({k: torch.from_numpy(v) for k, v in self.global_arrays.items()},
                       model_dir / "global_model.pt")
            meta = {"task": self.cfg.task, "kind": self.fed.kind,
                    "input_shape": list(self.fed.input_shape),
                    "num_classes": self.fed.num_classes, "threshold": self.threshold,
                    "threshold_percentile": self.cfg.threshold_percentile,
                    "config": self.cfg.to_dict()}
            (model_dir / "model_meta.json").write_text(json.dumps(meta, indent=2))
            self.tracker.log_file(model_dir / "global_model.pt", "model")
            self.tracker.log_file(model_dir / "model_meta.json", "model")
            if self.last_clients:
                keys = sorted({k for r in self.last_clients for k in r},
                              key=lambda k: (k != "partition-id", k))
                with open(d / "client_metrics.csv", "w", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=keys)
                    writer.writeheader()
                    writer.writerows(self.last_clients)
                self.tracker.log_file(d / "client_metrics.csv")
            rows = self.participation.table()
            if rows:
                with open(d / "participation.csv", "w", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
                self.tracker.log_file(d / "participation.csv")


def open_tracker(cfg: RunConfig) -> Tracker:
    """Attach to the run named in the config, or start a new one."""
    if cfg.mlflow_run_id:
        return Tracker.attach(cfg.tracking_uri, cfg.mlflow_run_id)
    return Tracker.start(cfg.tracking_uri, cfg.experiment)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = parse_run_config(context.run_config)
    grid = tune_simulation_grid(grid)
    tracker = open_tracker(cfg)
    try:
        # a run with a checkpoint resumes from it (fedpers run --resume, or flwr run with
        # its mlflow-run-id); its params are logged already
        resume = CheckpointStore(tracker).resume_point(cfg) if cfg.mlflow_run_id else None
        if resume is None:
            # only the keys that apply to this config (fedpers.run_params); where the
            # run is recorded is a tag; config.json keeps every key
            tracker.log_params(applicable_params(cfg))
            tracker.set_tags({"fedpers.config_digest": cfg.digest(), **bookkeeping_tags(cfg)})
        # numpy's BLAS threads spin for a while after each call (the update norms'
        # dot products): on the Simulation Engine that took ~10% of a core from the
        # clients' training (benchmarks/overhead/README.md); the server's vectors are
        # small, one thread loses nothing, and the sums no longer depend on the core count
        experiment = Experiment(cfg, virtual_grid(cfg, grid, tracker.run_id), tracker,
                                resume=resume)
        # ... and the rounds' full garbage collections skip what lives for the whole run
        # (0.3 s every few rounds otherwise, fedpers.heap)
        with threadpool_limits(limits=1, user_api="blas"), frozen_heap():
            experiment.run()
    except RunInterrupted as exc:  # SIGINT / SIGTERM (fedpers.interrupt): resumable
        exc.run_id = tracker.run_id
        tracker.finish("KILLED")
        # returned, not raised: Flower waits 3 s for the context of a ServerApp that
        # raised before it stops; fedpers.simulation raises it in the main thread
        note_interrupted(exc)
        return
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        if cfg.virtual_nodes:  # simulation: the clients' disk is this machine's
            remove_states(client_state.state_root({}, cfg.client_state_dir), tracker.run_id)
    tracker.finish("FINISHED")


#: seconds between the Simulation Engine grid's pulls for replies (Flower's default 0.1 s
#: is dead time at the end of every call, benchmarks/overhead/README.md)
SIMULATION_PULL_INTERVAL = 0.02


def tune_simulation_grid(grid: Grid) -> Grid | StoppableGrid:
    """On the Simulation Engine, pull replies every ``SIMULATION_PULL_INTERVAL`` s: a
    call then ends within 20 ms of its last reply instead of up to 100 ms. (Each pull
    looks the call's message ids up in the in-memory LinkState, ~0.15 ms of the
    driver's CPU: 10 ms between pulls cost 1.5% of a core through a whole round.)

    Returns the grid the ServerApp uses: there, a :class:`~fedpers.interrupt.StoppableGrid`
    that stops waiting for replies when ``fedpers run`` is interrupted (SIGINT,
    SIGTERM: the ServerApp runs in a thread of that process); elsewhere ``grid``."""
    if engine.lower_pull_interval(grid, SIMULATION_PULL_INTERVAL):
        return StoppableGrid(grid)
    return grid


def virtual_grid(cfg: RunConfig, grid: Grid | StoppableGrid,
                 run_id: str) -> Grid | StoppableGrid | VirtualGrid:
    """The grid the round loop uses: with ``virtual-nodes``, a :class:`VirtualGrid`
    (``fedpers.virtual``) over the Simulation Engine's few SuperNodes."""
    if not cfg.virtual_nodes:
        return grid
    base = grid.inner if isinstance(grid, StoppableGrid) else grid
    if not engine.is_simulation_grid(base):
        raise ConfigError(f"run-config key 'virtual-nodes' = {cfg.virtual_nodes} works on "
                          f"the Simulation Engine only (this ServerApp runs on a "
                          f"{type(base).__name__}); in deployment each SuperNode is one "
                          f"client: set virtual-nodes = 0")
    return VirtualGrid(grid, cfg.num_clients, run_id, cfg.clients_per_call)
