"""Local training only: the no-federation baseline.

Each client trains its own model and never uses the global one: its model lives in
its Context state (``"local-model"``, every state_dict entry) and is restored over
the broadcast before each use (the first time a client is selected it starts from
the server's initial model, like every other method). It still uploads its model
every round, so the round loop, the strategy and ``comm/bytes_*`` run exactly as
for FedAvg and the byte columns stay comparable; no client ever reads the server's
average, so ``eval/global_accuracy`` here is that of an average of independently
trained models and means nothing. Nothing is private in the upload sense
(``private_keys`` is empty): this baseline shares its weights but ignores
everyone else's.

Under ``fedprox`` the proximal term pulls towards the client's own previous model;
under ``scaffold`` the server's control variates still correct the local steps, so
use ``strategy = "fedavg"`` for a pure local baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clients.private_state import model_arrays, restore, save_state
from fedpers.client_records import ContextRecords

if TYPE_CHECKING:
    from flwr.app import RecordDict
    from torch import nn

    from clients.base import LocalContext, LocalUpdate
    from fedpers.training import TrainResult

STATE_KEY = "local-model"


class LocalOnly:
    def state(self, context_state: RecordDict) -> ContextRecords:
        """The client's own model (record ``local-model``)."""
        return ContextRecords(context_state, [STATE_KEY])

    def private_keys(self, model: nn.Module) -> set[str]:
        return set()

    def prepare(self, model: nn.Module, local: LocalContext) -> None:
        restore(model, local, STATE_KEY, set(model.state_dict()))

    def train(self, model: nn.Module, update: LocalUpdate, local: LocalContext) -> TrainResult:
        result = update.train(model, local)
        save_state(local, STATE_KEY, model_arrays(model))
        return result

    def eval_model(self, model: nn.Module, local: LocalContext) -> nn.Module:
        return model
