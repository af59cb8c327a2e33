"""Plain local SGD: the client half of FedAvg (arXiv 1602.05629)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clients.local_training import local_sgd

if TYPE_CHECKING:
    from torch import nn

    from clients.base import LocalContext
    from fedpers.training import TrainResult


class SGDUpdate:
    """``local-epochs`` epochs of mini-batch SGD on the client's train part."""

    stateless = True  # nothing kept across rounds

    def train(self, model: nn.Module, local: LocalContext) -> TrainResult:
        return local_sgd(model, local)
