"""Protocols of the client halves and the context they run in.

State across rounds: a client half keeps it in the client's Context state
(``LocalContext.state``), never in itself (one instance serves every client). A half
that keeps something has ``state(context_state)`` giving the
:class:`fedpers.client_records.ContextRecords` it owns (``state_dict()`` /
``load_state_dict()``); one that keeps nothing says ``stateless = True``. The client
checkpoint walks them; ``tests/clients/test_client_state_contract.py`` checks both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from fedpers.config import RunConfig
    from fedpers.data.base import ClientData
    from fedpers.training import TrainResult


@dataclass
class LocalContext:
    """Everything a client half may read while it serves one message."""

    cfg: RunConfig
    data: ClientData
    kind: str  # "classification" | "anomaly"
    server_round: int
    partition_id: int
    seed: int  # derived from the run seed, the round and the client
    device: torch.device
    state: Any  # flwr.app.RecordDict: this client's state, kept across rounds
    server_config: dict[str, Any]  # the ConfigRecord that came with the message
    # ArrayRecords that came with the message besides the model ("arrays"), by record
    # name (e.g. SCAFFOLD's server control variate "control").
    server_arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # ArrayRecords a local update rule sends back besides the model, by record name;
    # the ClientApp keeps only the shared parameter names (private ones never leave).
    reply_arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # state_dict keys the personaliser keeps on the client (set by the ClientApp). Local
    # update rules act on the shared part only: the ClientApp drops these names from
    # ``server_arrays`` and the proximal term skips them.
    private_keys: frozenset[str] = frozenset()


class LocalUpdate(Protocol):
    """How a client trains the model it was sent (a strategy's client half)."""

    def train(self, model: nn.Module, local: LocalContext) -> TrainResult: ...


class Personalizer(Protocol):
    """Which parameters stay on the client, and how the client adapts its model."""

    def private_keys(self, model: nn.Module) -> set[str]:
        """state_dict keys that never leave the client."""
        ...

    def prepare(self, model: nn.Module, local: LocalContext) -> None:
        """Called after the global (shared) parameters are loaded into ``model``."""
        ...

    def train(self, model: nn.Module, update: LocalUpdate, local: LocalContext) -> TrainResult:
        """Local training for this round; the shared part of ``model`` is uploaded."""
        ...

    def eval_model(self, model: nn.Module, local: LocalContext) -> nn.Module:
        """The model this client uses on its own data (its personalised model)."""
        ...
