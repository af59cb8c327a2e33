"""No personalisation: every parameter is shared, the global model is the client's model."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from clients.base import LocalContext, LocalUpdate
    from fedpers.training import TrainResult


class NoPersonalization:
    stateless = True  # nothing kept across rounds

    def private_keys(self, model: nn.Module) -> set[str]:
        return set()

    def prepare(self, model: nn.Module, local: LocalContext) -> None:
        return None

    def train(self, model: nn.Module, update: LocalUpdate, local: LocalContext) -> TrainResult:
        return update.train(model, local)

    def eval_model(self, model: nn.Module, local: LocalContext) -> nn.Module:
        return model
