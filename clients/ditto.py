"""Ditto: a personal model pulled towards the global one (Li et al., arXiv 2012.04221,
Algorithm 1).

Each round the client (1) trains the global model it received with the strategy's
local update and uploads it, as in FedAvg, and (2) trains its personal model ``v``
for ``local-epochs`` epochs of local SGD on

    f_k(v) + lambda/2 * ||v - w||^2,   gradient  grad f_k(v) + lambda * (v - w),

where ``w`` is the global model as received this round and ``lambda`` is
``ditto-lambda`` (0: ``v`` is trained purely locally; large: ``v`` stays at ``w``).
``v`` (every state_dict entry) lives in the Context state (``"ditto-personal"``),
starts as the global model the first time the client is selected, never leaves the
client, and is the model the client evaluates. Nothing of the uploaded model is
private (``private_keys`` is empty). Local compute is twice FedAvg's.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from clients.local_training import personal_sgd
from clients.private_state import load_arrays, load_state, model_arrays, save_state
from clients.proximal import proximal_hook
from fedpers.client_records import ContextRecords
from fedpers.seeds import Stream

if TYPE_CHECKING:
    from flwr.app import RecordDict
    from torch import nn

    from clients.base import LocalContext, LocalUpdate
    from fedpers.training import TrainResult

STATE_KEY = "ditto-personal"


def personal_model(model: nn.Module, local: LocalContext) -> nn.Module | None:
    """This client's personal model (a copy of ``model`` with ``v`` loaded), or None."""
    stored = load_state(local, STATE_KEY)
    if stored is None:
        return None
    personal = copy.deepcopy(model)
    load_arrays(personal, stored)
    return personal


class Ditto:
    def state(self, context_state: RecordDict) -> ContextRecords:
        """The personal model (record ``ditto-personal``)."""
        return ContextRecords(context_state, [STATE_KEY])

    def private_keys(self, model: nn.Module) -> set[str]:
        return set()

    def prepare(self, model: nn.Module, local: LocalContext) -> None:
        return None

    def train(self, model: nn.Module, update: LocalUpdate, local: LocalContext) -> TrainResult:
        personal = personal_model(model, local)
        if personal is None:  # first time selected: v starts as the global model
            personal = copy.deepcopy(model)
        # towards w as received
        pull = proximal_hook(model, local.personal.ditto_lambda, local.device)
        result = update.train(model, local)
        personal_sgd(personal, local, local.training.local_epochs, Stream.DITTO_PERSONAL,
                     grad_hook=pull)
        save_state(local, STATE_KEY, model_arrays(personal))
        return result

    def eval_model(self, model: nn.Module, local: LocalContext) -> nn.Module:
        personal = personal_model(model, local)
        return model if personal is None else personal
