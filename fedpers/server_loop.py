"""The server's round loop: one loop for every strategy, selector, codec and task.

Each round: select clients (seeded) -> ``strategy.configure_train`` on a grid view
that shows only them -> send, count bytes both ways -> the training pipeline
(``fedpers.server_pipeline``: screening, robust aggregation, DP, the strategy's
aggregation) -> federated evaluation of each client's own model on its local test
part and of the global model on the held-out test set (``fedpers.server_eval``) ->
one batched MLflow write -> a checkpoint every ``checkpoint-every`` rounds
(``fedpers.server_checkpoint``).

With a device profile (``device-profile``), ``fedpers.participation`` puts training
on a simulated clock: only clients online in the round are selectable, mid-round
dropouts and clients past ``round-deadline`` are *dropped*, and each round's
simulated duration is logged.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from clients import PERSONALIZERS
from fedpers import client_state
from fedpers import server_checkpoint as checkpointing
from fedpers.arrays import to_array_record
from fedpers.byte_count import ByteCounter, ReplySizes, content_bytes, messages_bytes
from fedpers.checkpoint import Checkpoint, CheckpointStore
from fedpers.checkpoint_files import CheckpointParams
from fedpers.codecs import build_codec
from fedpers.compression import encode_broadcast
from fedpers.config import RunConfig, clients_per_round
from fedpers.data import TASKS, DataSpec, FederatedData, load_federated
from fedpers.interrupt import RunInterrupted, check
from fedpers.participation import Participation
from fedpers.privacy import build_privacy
from fedpers.robust import STEPS, RobustLayer
from fedpers.roster import Roster, SelectedGrid, refresh_roster, wait_for_nodes
from fedpers.screening import REJECT_REASONS
from fedpers.seeds import Stream, derive_seed
from fedpers.selection import build_selector
from fedpers.server_eval import evaluate_global, evaluate_round
from fedpers.server_outputs import log_artifacts, log_progress
from fedpers.server_pipeline import RoundState, build_server_pipeline, run_pipeline
from fedpers.state import require_state_protocol
from fedpers.tracking import Tracker
from fedpers.training import resolve_device
from fedpers.virtual import VirtualGrid, virtual_roster_entries
from strategies import STRATEGIES, build_strategy

logger = logging.getLogger("fedpers")

# Clients' first reply includes process start-up and data loading: give the handshake
# at least this long even when round-timeout is short.
MIN_HANDSHAKE_TIMEOUT = 120.0
# a run fails after this many rounds in a row in which every client the round sent
# work to failed or timed out (see Experiment.run)
MAX_FAILED_ROUNDS = 3
REJECTED_PREFIX = "clients/rejected_"


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

    def state_dict(self) -> dict[str, Any]:
        return {"seen": [r for r in REJECT_REASONS if r in self.seen]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = set(state["seen"])


@dataclass
class RoundLog:
    """What one round produced; ``metrics`` is what MLflow gets."""

    metrics: dict[str, float] = field(default_factory=dict)
    client_rows: list[dict[str, Any]] = field(default_factory=list)
    # the round updated the global model (at least min-train-clients valid updates)
    aggregated: bool = False
    # the round sent work to clients and every one of them failed or timed out
    all_failed: bool = False


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
        self.strategy = build_strategy(cfg)
        self.checkpoint_params = CheckpointParams.from_config(cfg)
        self.extra_records = spec.extra_records
        self.robust = RobustLayer(cfg, spec.normalises_steps)
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
        # selection statistics and the simulated clock (fedpers.participation)
        model_bytes = content_bytes(RecordDict({"arrays": to_array_record(self.global_arrays)}))
        self.participation = Participation(cfg, self.roster,
                                           model_bytes * (1 + len(self.extra_records)),
                                           spec.partial_work)
        self.handshake_timeout = max(cfg.round_timeout, MIN_HANDSHAKE_TIMEOUT)
        self.threshold: float | None = None
        self.last_clients: list[dict[str, Any]] = []
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
        self.pipeline = build_server_pipeline(
            cfg, strategy=self.strategy, codec=self.codec, extra_records=self.extra_records,
            required_metrics=(STEPS,) if spec.normalises_steps else (), roster=self.roster,
            participation=self.participation, reject_reasons=self.reject_reasons,
            robust=self.robust, privacy=self.privacy)
        for name, component in self.components().items():  # fail now, not at a checkpoint
            require_state_protocol(name, component)

    def components(self) -> dict[str, object]:
        """Every server component by name: what a checkpoint walks (``fedpers.state``)."""
        return {"strategy": self.strategy, "selector": self.selector,
                "aggregator": self.robust.aggregator, "robust": self.robust,
                "privacy": self.privacy, "participation": self.participation,
                "bytes": self.bytes, "reject_reasons": self.reject_reasons,
                **{f"step/{type(s).__name__}": s for s in self.pipeline}}

    # ------------------------------------------------------------ one round
    def send(self, messages: list[Message], count_up: bool = True,
              sizes: ReplySizes | None = None) -> list[Message]:
        self.bytes.add_down(messages_bytes(messages))
        replies = list(self.grid.send_and_receive(messages, timeout=self.cfg.round_timeout))
        if count_up:
            self.bytes.add_up((sizes or ReplySizes()).total(replies))
        return replies

    def partition(self, reply: Message) -> int:
        return self.roster.partition_of.get(reply.metadata.src_node_id, -1)

    def evaluate_round(self, rnd: int, out: RoundLog) -> None:
        evaluate_round(self, rnd, out)

    def evaluate_global(self, out: RoundLog) -> None:
        evaluate_global(self, out)

    def checkpoint_components(self) -> dict[str, object]:
        """:meth:`components` plus the loop's own state (``fedpers.server_checkpoint``)."""
        return checkpointing.checkpoint_components(self)

    def _snapshot(self, rnd: int, clients: dict[str, dict[str, Any]]) -> Checkpoint:
        return checkpointing.snapshot(self, rnd, clients)

    def _check_replay(self, rnd: int, metrics: dict[str, float]) -> None:
        checkpointing.check_replay(self, rnd, metrics)

    def train_round(self, rnd: int, out: RoundLog) -> None:
        """Select, send, then the training pipeline (``fedpers.server_pipeline``)."""
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
        replies = (self.send(to_send, count_up=part.clock is None, sizes=sizes)
                   if to_send else [])
        late = part.finish(rnd, replies, sizes)  # past the round deadline: dropped
        if part.clock is not None:  # a late upload is abandoned at the deadline
            self.bytes.add_up(sizes.total([r for r in replies
                                           if self.partition(r) not in late]))
        state = RoundState(rnd=rnd, reference=self.global_arrays, replies=replies,
                           selected=len(messages), sent=len(to_send), late=late, sizes=sizes,
                           releases_before=self.aggregated)
        out.metrics.update(run_pipeline(self.pipeline, state))
        if state.global_arrays is not None:
            self.global_arrays = state.global_arrays
        out.aggregated = state.aggregated
        out.all_failed = state.all_failed

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
        if isinstance(self.grid, VirtualGrid):  # no handshake, see _virtual_roster
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
        checkpointing.restore_checkpoint(self)
        # rounds replayed after a crash whose metrics were already logged: not again
        logged = checkpointing.relog_missing(self) if self.resume is not None else set()
        self.done_round = self.start_round
        for rnd in range(self.start_round + 1, cfg.num_server_rounds + 1):
            check(f"before round {rnd}")
            self._round(rnd, logged)
        log_artifacts(self)
        if self.checkpoint_params.checkpoint_every or self.resume is not None:
            checkpointing.client_states(self, client_state.DROP, self.roster.partitions(),
                                        lambda p: {})
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
        log_progress(self, rnd, out.metrics, time.perf_counter() - t0)
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
        if self.checkpoint_params.due(rnd):
            check(f"before the checkpoint of round {rnd}")
            checkpointing.save_checkpoint(self, rnd)

    def _virtual_roster(self) -> list[int]:
        """``virtual-nodes``: every client is in the roster from the start, with the
        size of its training set from the data this (simulation) process loaded: what
        the handshake would have learnt, without a message to each of them. Waits for
        the real SuperNodes; returns their ids."""
        assert isinstance(self.grid, VirtualGrid), "virtual-nodes runs on a VirtualGrid"
        nodes = wait_for_nodes(self.grid.inner, self.cfg.virtual_nodes, self.handshake_timeout)
        partition_of, num_examples = virtual_roster_entries(
            {p: c.num_train for p, c in enumerate(self.fed.clients)})
        self.roster.partition_of.update(partition_of)
        self.roster.num_examples.update(num_examples)
        logger.info("virtual clients: %d SuperNode(s) serve %d clients", len(nodes),
                    len(partition_of))
        return nodes
