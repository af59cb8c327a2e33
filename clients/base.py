"""Protocols of the client halves and the context they run in.

State across rounds: a client half keeps it in the client's Context state
(``LocalContext.state``), never in itself (one instance serves every client). A half
that keeps something has ``state(context_state)`` giving the
:class:`fedpers.client_records.ContextRecords` it owns (``state_dict()`` /
``load_state_dict()``); one that keeps nothing says ``stateless = True``. The client
checkpoint walks them; ``tests/clients/test_client_state_contract.py`` checks both.

Parameters: a client half reads its run-config keys from two frozen dataclasses,
:class:`TrainingParams` (``LocalContext.training``: local SGD and the straggler
profile) and :class:`PersonalizationParams` (``LocalContext.personal``: the
personalisers' keys), never from the whole run config. A new key a client half reads
is a key in ``fedpers/config.py`` plus a field of one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fedpers.registry import Params

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from fedpers.config import RunConfig
    from fedpers.data.base import ClientData
    from fedpers.training import TrainResult


@dataclass(frozen=True)
class TrainingParams(Params):
    """The run-config keys of local training (``clients.local_training``).

    Attributes
    ----------
    local_epochs : int
        ``local-epochs``: local epochs per round.
    batch_size : int
        ``batch-size``: local SGD mini-batch size.
    lr : float
        ``lr``: local SGD learning rate.
    momentum : float
        ``momentum``: local SGD momentum (0 = plain SGD).
    straggler_fraction : float
        ``straggler-fraction``: share of the clients that are stragglers.
    straggler_work : float
        ``straggler-work``: share of their local SGD steps stragglers complete.
    num_clients : int
        ``num-clients``: clients in the federation (who straggles is drawn among them).
    seed : int
        ``seed``: the run seed (who straggles depends on it; a call's batches come
        from ``LocalContext.seed``, derived from it).
    """

    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    straggler_fraction: float
    straggler_work: float
    num_clients: int
    seed: int


@dataclass(frozen=True)
class PersonalizationParams(Params):
    """The run-config keys of the personalisers (``PERSONALIZERS``).

    Attributes
    ----------
    personalization : str
        ``personalization``: the personaliser's name.
    finetune_epochs : int
        ``finetune-epochs``: finetune's local epochs on a copy of the global model.
    finetune_lr : float
        ``finetune-lr``: finetune's learning rate (0 = ``lr``).
    fedrep_head_epochs : int
        ``fedrep-head-epochs``: FedRep's epochs on the private head per round.
    ditto_lambda : float
        ``ditto-lambda``: Ditto's pull of the personal model towards the global one.
    apfl_alpha : float
        ``apfl-alpha``: APFL's initial mixing weight.
    """

    personalization: str
    finetune_epochs: int
    finetune_lr: float
    fedrep_head_epochs: int
    ditto_lambda: float
    apfl_alpha: float


@dataclass
class LocalContext:
    """Everything a client half may read while it serves one message."""

    training: TrainingParams
    personal: PersonalizationParams
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

    @classmethod
    def from_config(cls, cfg: RunConfig, **rest: Any) -> LocalContext:
        """A context with ``cfg``'s training and personalisation keys; ``rest`` gives
        the other fields (``data``, ``kind``, ``server_round``, ...)."""
        return cls(training=TrainingParams.from_config(cfg),
                   personal=PersonalizationParams.from_config(cfg), **rest)


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
