"""Pieces the personalisers share: private state in the Flower Context and the base
of the methods that keep some parameters on the client.

Private state lives in the client's Context state (``LocalContext.state``, a
RecordDict kept across rounds) as ArrayRecords built with
:func:`fedpers.arrays.to_array_record`, never in files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from fedpers.arrays import record_to_numpy, to_array_record
from fedpers.client_records import ContextRecords
from fedpers.training import TrainResult

if TYPE_CHECKING:
    from flwr.app import RecordDict
    from torch import nn

    from clients.base import LocalContext, LocalUpdate


def model_arrays(model: nn.Module, keys: set[str] | None = None) -> dict[str, np.ndarray]:
    """Copies of ``model``'s state_dict entries (all, or those in ``keys``) as numpy."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()
            if keys is None or k in keys}


def load_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Copy ``arrays`` into ``model``'s entries of the same name (others untouched)."""
    state = model.state_dict()
    with torch.no_grad():
        for k, v in arrays.items():
            state[k].copy_(torch.as_tensor(np.array(v)).reshape(state[k].shape))


def load_state(local: LocalContext, name: str) -> dict[str, np.ndarray] | None:
    """The ArrayRecord ``name`` of this client's Context state as numpy, or None."""
    record = local.state.array_records.get(name)
    return None if record is None else record_to_numpy(record)


def save_state(local: LocalContext, name: str, arrays: dict[str, np.ndarray]) -> None:
    """Keep ``arrays`` in this client's Context state under ``name`` (0-d stays 0-d)."""
    local.state[name] = to_array_record(arrays)


def restore(model: nn.Module, local: LocalContext, name: str, keys: set[str]) -> bool:
    """Load the entries ``keys`` of ``model`` from the state record ``name``.

    Entries missing from the record, or whose shape changed, keep the values they
    have (the server's, the first time a client is selected). Returns whether the
    record existed.
    """
    stored = load_state(local, name)
    if stored is None:
        return False
    state = model.state_dict()
    load_arrays(model, {k: v for k, v in stored.items()
                        if k in keys and k in state and tuple(v.shape) == tuple(state[k].shape)})
    return True


class KeepPrivate:
    """Base of the methods that keep some state_dict entries on the client (FedPer,
    FedRep, FedBN): ``private_keys`` says which; they are restored from the Context
    state record ``state_name`` before each use and stored back after training.
    Subclasses set ``state_name`` and ``private_keys`` and may override ``local_train``.
    """

    state_name = "private"

    def private_keys(self, model: nn.Module) -> set[str]:
        raise NotImplementedError

    def state(self, context_state: RecordDict) -> ContextRecords:
        """The private parameters this client keeps (record ``state_name``)."""
        return ContextRecords(context_state, [self.state_name])

    def prepare(self, model: nn.Module, local: LocalContext) -> None:
        restore(model, local, self.state_name, self.private_keys(model))

    def local_train(self, model: nn.Module, update: LocalUpdate,
                    local: LocalContext) -> TrainResult:
        return update.train(model, local)

    def train(self, model: nn.Module, update: LocalUpdate, local: LocalContext) -> TrainResult:
        result = self.local_train(model, update, local)
        save_state(local, self.state_name, model_arrays(model, self.private_keys(model)))
        return result

    def eval_model(self, model: nn.Module, local: LocalContext) -> nn.Module:
        return model
