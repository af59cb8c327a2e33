"""The server's training round after the replies are in: an ordered list of steps.

::

    replies ──> Screening ──> RobustAggregation ──> DifferentialPrivacy ──> StrategyAggregation
                (decode once,   (clip-update-norm,   (dp: re-clip, noise,   (the strategy's
                 check, reject)  aggregation)         the noised average)    aggregate_train)

Each step has one interface, ``apply(state, updates) -> (updates, metrics)``: it gets
the round's :class:`RoundState` and the updates the step before handed on (decoded
numpy arrays with their metrics and extra records, :class:`~fedpers.screening.CheckedReply`)
and returns the updates for the next step and the metrics it adds to the round. The
first step reads the raw replies from ``state.replies`` and decodes each one once. A
step may end the round's aggregation (``state.halted``: too few valid updates); then
the steps after it do not run. After the steps, :meth:`Step.close` of every step runs,
halted or not (DP logs the budget spent so far every round).

A new step is a new class here (or anywhere) and one line in
:func:`build_server_pipeline`; the round loop (``fedpers.server_loop``) holds no branch
per feature.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Message

from fedpers.arrays import record_to_numpy
from fedpers.byte_count import ReplySizes
from fedpers.compression import UploadStats
from fedpers.screening import (
    REJECT_REASONS,
    CheckedReply,
    RejectedReply,
    clean_reply,
    consistent_key_sets,
    screen_train_reply,
    weighted_mean,
)

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from fedpers.codecs.base import Codec
    from fedpers.config import RunConfig
    from fedpers.participation import Participation
    from fedpers.privacy import PrivacyLayer
    from fedpers.robust import RobustLayer
    from fedpers.roster import Roster
    from fedpers.server_loop import RejectReasons

logger = logging.getLogger(__name__)


@dataclass
class RoundState:
    """What the steps of one training round share (read-only but for the results).

    ``reference`` is the global model the round started from (never changed by a
    step); ``global_arrays`` is the model after aggregation (``None``: unchanged).
    """

    rnd: int
    reference: dict[str, np.ndarray]
    replies: list[Message]
    selected: int  # clients the strategy sent work to (dropouts included)
    sent: int  # messages actually sent (the simulated clock's dropouts excluded)
    late: set[int] = field(default_factory=set)  # partitions past the deadline
    # each reply sized once (bytes, clock, compression ratio)
    sizes: ReplySizes = field(default_factory=ReplySizes)
    releases_before: int = 0  # rounds aggregated before this one (DP accounting)
    screened: list[CheckedReply] = field(default_factory=list)  # the valid updates
    global_arrays: dict[str, np.ndarray] | None = None
    aggregated: bool = False
    all_failed: bool = False
    halted: bool = False


Updates = list[CheckedReply]


class Step:
    """One step of the server pipeline (module docstring)."""

    stateless = True  # a step that carries state between rounds overrides both methods

    def apply(self, state: RoundState, updates: Updates) -> tuple[Updates, dict[str, float]]:
        raise NotImplementedError

    def close(self, state: RoundState) -> dict[str, float]:
        """Metrics logged every round after the steps ran (halted or not)."""
        return {}


def run_pipeline(steps: Sequence[Step], state: RoundState) -> dict[str, float]:
    """Run ``steps`` in order; return the metrics they added, in order."""
    metrics: dict[str, float] = {}
    updates: Updates = []
    for step in steps:
        updates, added = step.apply(state, updates)
        metrics.update(added)
        if state.halted:
            break
    for step in steps:
        metrics.update(step.close(state))
    return metrics


class Screening(Step):
    """Decode and check every reply (``fedpers.screening``): errors and time-outs are
    *failed*, replies past the simulated deadline are dropped, malformed ones are
    *rejected* by reason; the valid ones go on, sorted by partition id. Halts the
    round with fewer than ``min-train-clients`` valid updates."""

    def __init__(self, cfg: RunConfig, codec: Codec, extra_records: tuple[str, ...],
                 required_metrics: tuple[str, ...], roster: Roster,
                 participation: Participation, reject_reasons: RejectReasons) -> None:
        self.codec = codec
        self.extra_records = extra_records
        self.required_metrics = required_metrics
        self.max_norm = cfg.max_update_norm
        self.min_clients = cfg.min_train_clients
        self.roster = roster
        self.participation = participation
        self.reject_reasons = reject_reasons

    def apply(self, state: RoundState, updates: Updates) -> tuple[Updates, dict[str, float]]:
        rnd = state.rnd
        failed = state.sent - len(state.replies)
        checked: list[CheckedReply] = []
        rejected = dict.fromkeys(REJECT_REASONS, 0)  # by reason
        upload = UploadStats(self.codec.lossy)
        for reply in state.replies:
            pid = self.roster.partition_of.get(reply.metadata.src_node_id, -1)
            if reply.has_error():
                failed += 1
                logger.warning("round %d: client %d failed: %s", rnd, pid, reply.error.reason)
                continue
            if pid in state.late:
                continue
            try:
                c = screen_train_reply(reply, state.reference, self.codec, self.extra_records,
                                       self.max_norm, pid, self.required_metrics,
                                       self.roster.num_examples.get(pid, 0))
            except RejectedReply as exc:
                rejected[exc.reason] += 1
                logger.warning("round %d: update from client %d rejected (%s): %s", rnd, pid,
                               exc.reason, exc)
                continue
            checked.append(replace(c, reply=reply))
            upload.add(reply, c.arrays, c.metrics, c.extra, state.sizes)
        keep, drop = consistent_key_sets(checked)
        for c in drop:
            rejected["keys"] += 1
            logger.warning("round %d: update from client %d rejected: its parameter names "
                           "differ from the other clients'", rnd, c.partition_id)
        valid = sorted(keep, key=lambda c: c.partition_id)
        metrics = {"clients/selected": float(state.selected),
                   "clients/trained": float(len(valid)),
                   "clients/failed": float(failed),
                   "clients/rejected": float(sum(rejected.values()))}
        metrics.update(self.reject_reasons.metrics(rejected))
        norms = [c.norm for c in valid]  # measured by the screening
        if norms:
            metrics["clients/update_norm_median"] = float(np.median(norms))
            metrics["clients/update_norm_max"] = float(np.max(norms))
        metrics.update(upload.metrics())
        metrics.update(self.participation.metrics())
        self.participation.note_trained((c.partition_id, c.metrics) for c in valid)
        state.screened = valid
        state.all_failed = bool(state.sent) and failed == state.sent
        if len(valid) < self.min_clients:
            logger.warning("round %d: only %d valid updates (min-train-clients = %d); the "
                           "global model is not updated", rnd, len(valid), self.min_clients)
            state.halted = True
        return valid, metrics


class RobustAggregation(Step):
    """Norm clipping and the robust aggregator (``fedpers.robust.RobustLayer``).

    Its result reaches the strategy as rewritten replies (``y_i <- x + r``, or the
    replies Krum keeps), not as one aggregate: the strategy's own step must see as many
    replies as passed, because its arithmetic depends on them (SCAFFOLD sums every
    reply's control update into ``c``; FedAvg's weighted mean of identical models is
    ``x + r`` only up to float rounding, so a single reply would change the golden
    numbers)."""

    def __init__(self, layer: RobustLayer) -> None:
        self.layer = layer

    def apply(self, state: RoundState, updates: Updates) -> tuple[Updates, dict[str, float]]:
        out = self.layer.apply(updates, state.reference)
        return [c for _, c in out.passed], out.metrics


class DifferentialPrivacy(Step):
    """DP-FedAvg's noised average (``fedpers.privacy``); every round logs the budget
    spent so far. Like :class:`RobustAggregation`, each passed reply carries the
    noised average ``x + v`` (the strategy's server optimiser steps on it)."""

    def __init__(self, privacy: PrivacyLayer) -> None:
        self.privacy = privacy

    def apply(self, state: RoundState, updates: Updates) -> tuple[Updates, dict[str, float]]:
        out = self.privacy.server.apply(state.rnd, list(enumerate(updates)), state.reference,
                                        state.selected)
        return [c for _, c in out.passed], out.metrics

    def close(self, state: RoundState) -> dict[str, float]:
        return self.privacy.metrics(state.releases_before + int(state.aggregated))


class StrategyAggregation(Step):
    """The strategy's ``aggregate_train`` over the updates, as Flower replies; sets
    ``state.global_arrays`` and logs the mean training loss of the valid updates."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def apply(self, state: RoundState, updates: Updates) -> tuple[Updates, dict[str, float]]:
        agg, _ = self.strategy.aggregate_train(
            state.rnd, [clean_reply(c.reply, c) for c in updates if c.reply is not None])
        if agg is not None:
            new = dict(state.reference)
            for name, arr in record_to_numpy(agg).items():
                new[name] = arr.astype(state.reference[name].dtype, copy=False)
            state.global_arrays = new
        metrics: dict[str, float] = {}
        loss = weighted_mean((c.metrics["train-loss"], c.metrics["num-examples"])
                             for c in state.screened if "train-loss" in c.metrics)
        if loss is not None:
            metrics["train/loss"] = loss
        state.aggregated = True
        return updates, metrics


def build_server_pipeline(cfg: RunConfig, *, strategy: Strategy, codec: Codec,
                          extra_records: tuple[str, ...], required_metrics: tuple[str, ...],
                          roster: Roster, participation: Participation,
                          reject_reasons: RejectReasons, robust: RobustLayer,
                          privacy: PrivacyLayer | None) -> list[Step]:
    """The round's steps, in order: one line per step."""
    steps: list[Step | None] = [
        Screening(cfg, codec, extra_records, required_metrics, roster, participation,
                  reject_reasons),
        RobustAggregation(robust),
        DifferentialPrivacy(privacy) if privacy is not None else None,
        StrategyAggregation(strategy),
    ]
    return [s for s in steps if s is not None]
