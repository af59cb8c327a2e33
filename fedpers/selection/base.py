"""The selector protocol, and what the server knows about each client.

A selector picks this round's clients from the candidates (the clients online, by
partition id) with the round's seeded generator. Selectors that need more than the
candidates read :class:`ClientStats`, which the round loop keeps up to date after
every round: each client's last training loss, its simulated durations (with a
device profile), how often and when it was last selected. No Flower import here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedpers.registry import Params


@dataclass(frozen=True)
class SelectionParams(Params):
    """The run-config keys client selection reads.

    Attributes
    ----------
    selection : str
        ``selection``: the selector's name.
    pow_d : int
        ``pow-d``: candidates pow-d samples per round (0 = 2 x the round size).
    round_deadline : float
        ``round-deadline``: simulated seconds per round (deadline's cut-off, Oort's
        preferred round time; 0 = none).
    """

    selection: str
    pow_d: int
    round_deadline: float


@dataclass
class ClientRecord:
    """What the server knows about one client."""

    num_examples: int = 0  # its training-set size (from the handshake)
    # predicted seconds for a full round of local work, from its device profile and
    # measured bytes (None: no clock)
    expected_s: float | None = None
    last_loss: float | None = None  # training loss it last reported (None: never trained)
    last_duration_s: float | None = None  # simulated seconds of its last round
    times_selected: int = 0
    last_round: int = 0  # the last round it was selected in (0: never)


@dataclass
class ClientStats:
    """Per-client records, by partition id; a missing client is a fresh record."""

    clients: dict[int, ClientRecord] = field(default_factory=dict)

    def __getitem__(self, partition_id: int) -> ClientRecord:
        return self.clients.setdefault(partition_id, ClientRecord())

    def get(self, partition_id: int) -> ClientRecord:
        """The record, without adding one for an unknown client."""
        return self.clients.get(partition_id) or ClientRecord()

    def seen(self, partition_id: int) -> bool:
        """Whether the client has reported a training loss."""
        return self.get(partition_id).last_loss is not None

    def tried(self, partition_id: int) -> bool:
        """Whether the client has reported a loss or been timed on the clock (a client
        that missed the deadline has a duration but no loss)."""
        rec = self.get(partition_id)
        return rec.last_loss is not None or rec.last_duration_s is not None

    def mean_loss(self) -> float | None:
        """The mean of the clients' last reported losses (None: no loss yet)."""
        losses = [r.last_loss for r in self.clients.values() if r.last_loss is not None]
        return float(np.mean(losses)) if losses else None

    def note_selected(self, server_round: int, partition_ids: Iterable[int]) -> None:
        for p in partition_ids:
            rec = self[p]
            rec.times_selected += 1
            rec.last_round = server_round

    def selection_counts(self, partition_ids: Iterable[int]) -> list[int]:
        return [self.get(p).times_selected for p in partition_ids]

    def state_dict(self) -> dict[str, Any]:
        """Every client's record, by partition id (as a string, for JSON)."""
        return {str(p): dataclasses.asdict(r) for p, r in self.clients.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clients = {int(p): ClientRecord(**r) for p, r in state.items()}


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index ``(sum x)^2 / (n * sum x^2)``: 1 when all are equal,
    ``1/n`` when one client has everything. 1.0 for all zeros (nobody favoured)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0 or not np.any(x):
        return 1.0
    return float(x.sum() ** 2 / (x.size * np.square(x).sum()))


class Selector(Protocol):
    def build(self, params: SelectionParams) -> Selector:
        """This selector with its parameters taken from the selection keys."""
        ...

    def select(self, server_round: int, candidates: Sequence[int], num: int,
               rng: np.random.Generator, stats: ClientStats | None = None) -> list[int]:
        """Pick at most ``num`` of the ``candidates`` (partition ids) for this round,
        sorted, drawing randomness only from ``rng``."""
        ...
