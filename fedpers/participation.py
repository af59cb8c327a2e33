"""Who takes part in a round and how long it takes: selection statistics, simulated clock.

:class:`Participation` ties the round loop (``fedpers.server_loop``) to the selection
statistics (``fedpers.selection.ClientStats``) and, with a device profile, to the
simulated clock (``fedpers.devices.Clock``):

1. :meth:`candidates`: the clients online this round (all of them without a clock),
   with each one's predicted round time for the selectors;
2. :meth:`note_selected`: selection counts (and Jain's index over them);
3. :meth:`start`: draws the clients that drop out mid-round (they get the model but
   never reply: not sent, their download counted) and, for a strategy that takes
   partial work under a deadline, writes each client's step budget (``max-steps``)
   into its train config;
4. :meth:`finish`: times every reply on the clock with its exact bytes; clients
   past the deadline are late (dropped);
5. :meth:`note_trained`: each accepted client's training loss, for pow-d and Oort.

With ``device-profile = "none"`` only the selection statistics are kept: messages,
bytes and metrics are those of a run without this module, plus
``fairness/jain_selection``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Message, RecordDict

from fedpers.byte_count import Sizer, content_bytes
from fedpers.devices import (
    MAX_STEPS,
    DeviceParams,
    RoundTiming,
    build_clock,
    samples_processed,
)
from fedpers.selection import ClientStats, jain_index

if TYPE_CHECKING:
    from fedpers.config import RunConfig
    from fedpers.roster import Roster

logger = logging.getLogger(__name__)


class Participation:
    def __init__(self, cfg: RunConfig, roster: Roster, fallback_bytes: int,
                 partial_work: bool) -> None:
        """``fallback_bytes``: a client's bytes each way before any was measured (the
        uncompressed model and the strategy's extra records)."""
        self.cfg = cfg
        self.roster = roster
        self.clock = build_clock(DeviceParams.from_config(cfg))
        self.stats = ClientStats()
        self.fallback_bytes = fallback_bytes
        self.partial_work = partial_work and self.clock is not None and cfg.round_deadline > 0
        self._down: dict[int, int] = {}  # node id -> bytes of its train message
        self.dropped = 0
        self.timing: RoundTiming | None = None

    # ------------------------------------------------------------ before selection
    def candidates(self, server_round: int, available: Sequence[int]) -> list[int]:
        """The selectable clients: those online this round, with predictions."""
        for p in available:
            self.stats[p].num_examples = self.roster.num_examples.get(p, 0)
        if self.clock is None:
            return list(available)
        for p, values in self.roster.reported.items():
            self.clock.report(p, values)
        online = self.clock.online(server_round, available)
        for p in online:
            full_work = self.cfg.local_epochs * self.roster.num_examples.get(p, 0)
            self.stats[p].expected_s = self.clock.expected_seconds(p, full_work,
                                                                  self.fallback_bytes)
        return online

    def note_selected(self, server_round: int, chosen: Iterable[int]) -> float:
        """Count the selection; return Jain's index of the counts over all clients."""
        self.stats.note_selected(server_round, chosen)
        return jain_index(self.stats.selection_counts(self.roster.partitions()))

    # ------------------------------------------------------------ the round
    def start(self, server_round: int, messages: list[Message]
              ) -> tuple[list[Message], list[Message]]:
        """(messages to send, messages of clients that drop out mid-round)."""
        self.dropped = 0
        self.timing = None
        self._down = {}
        if self.clock is None:
            return messages, []
        send, gone = [], []
        for msg in messages:
            node = msg.metadata.dst_node_id
            pid = self.roster.partition_of[node]
            if self.clock.drops_out(server_round, pid):
                gone.append(msg)
                continue
            if self.partial_work:
                budget = self.clock.step_budget(pid, self.cfg.batch_size,
                                                content_bytes(msg.content), self.fallback_bytes)
                _set_config(msg, MAX_STEPS, budget)
            self._down[node] = content_bytes(msg.content)
            send.append(msg)
        self.dropped = len(gone)
        for msg in gone:
            logger.info("round %d: client %d dropped out mid-round", server_round,
                        self.roster.partition_of[msg.metadata.dst_node_id])
        return send, gone

    def finish(self, server_round: int, replies: Sequence[Message],
               size: Sizer = content_bytes) -> set[int]:
        """Time the replies on the clock; return the partition ids that were late.
        ``size``: what sizes a reply (the round's :class:`fedpers.byte_count.ReplySizes`)."""
        if self.clock is None:
            return set()
        seconds: dict[int, float] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or node not in self._down:
                continue
            pid = self.roster.partition_of[node]
            samples = self._samples(pid, reply)
            seconds[pid] = self.clock.seconds(pid, samples, self._down[node],
                                              size(reply.content))
            self.stats[pid].last_duration_s = seconds[pid]
        self.timing = self.clock.end_round(seconds)
        self.dropped += len(self.timing.late)
        for pid in self.timing.late:
            logger.info("round %d: client %d missed the deadline (%.1f s > %.1f s); its "
                        "update is dropped", server_round, pid, seconds[pid],
                        self.cfg.round_deadline)
        return set(self.timing.late)

    def _samples(self, pid: int, reply: Message) -> float:
        """Samples the client processed: from its reported steps (exact for local
        SGD), else local-epochs x its training-set size."""
        n = self.roster.num_examples.get(pid, 0)
        metrics: dict[str, Any] = {}
        for record in reply.content.metric_records.values():
            metrics = dict(record)
            break
        steps = metrics.get("steps")
        if isinstance(steps, (int, float)) and math.isfinite(steps) and steps >= 0:
            return float(samples_processed(int(steps), n, self.cfg.batch_size))
        return float(self.cfg.local_epochs * n)

    def note_trained(self, results: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """(partition id, metrics) of each accepted update: their training losses."""
        for pid, metrics in results:
            loss = metrics.get("train-loss")
            if isinstance(loss, (int, float)) and math.isfinite(loss):
                self.stats[pid].last_loss = float(loss)

    def table(self) -> list[dict[str, Any]]:
        """One row per client (partition id order): how often it was selected, its
        last selection, loss and simulated duration, and, with a clock, its device
        profile and predicted round time. Logged as ``participation.csv`` at the end
        of a run, so a user sees who a selector left out and why."""
        rows = []
        for p in self.roster.partitions():
            rec = self.stats.get(p)
            row: dict[str, Any] = {"partition-id": p,
                                   "num-examples": self.roster.num_examples.get(p, 0),
                                   "times-selected": rec.times_selected,
                                   "last-round": rec.last_round,
                                   "last-loss": _blank(rec.last_loss),
                                   "last-duration-s": _blank(rec.last_duration_s)}
            if self.clock is not None:
                prof = self.clock.profiles[p]
                row.update({"compute-sps": prof.compute_sps, "up-bps": prof.up_bps,
                            "down-bps": prof.down_bps, "availability": prof.availability,
                            "expected-s": _blank(rec.expected_s)})
            rows.append(row)
        return rows

    def state_dict(self) -> dict[str, Any]:
        """The selection statistics and the simulated clock (``None`` without one);
        the rest is rebuilt at the start of each round."""
        return {"selection": self.stats.state_dict(),
                "clock": None if self.clock is None else self.clock.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.stats.load_state_dict(state["selection"])
        if self.clock is not None and state["clock"] is not None:
            self.clock.load_state_dict(state["clock"])

    def metrics(self) -> dict[str, float]:
        if self.clock is None:
            return {}
        return {"time/round_s": self.timing.duration_s if self.timing else 0.0,
                "time/total_s": self.clock.total_s,
                "clients/dropped": float(self.dropped)}


def _blank(value: float | None) -> float | str:
    return "" if value is None else value


def _set_config(msg: Message, key: str, value: int) -> None:
    """Give this message its own train config with ``key`` set (strategies share one
    content among all messages of a round)."""
    content = msg.content
    name = next(iter(content.config_records), "config")
    config = ConfigRecord(dict(content.config_records.get(name, ConfigRecord())))
    config[key] = value
    msg.content = RecordDict({**dict(content.items()), name: config})
