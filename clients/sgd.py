"""Plain local SGD: the client half of FedAvg (arXiv 1602.05629)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpers.training import TrainResult, train_local

if TYPE_CHECKING:
    from torch import nn

    from clients.base import LocalContext


class SGDUpdate:
    """``local-epochs`` epochs of mini-batch SGD on the client's train part."""

    def train(self, model: nn.Module, lc: LocalContext) -> TrainResult:
        cfg = lc.cfg
        return train_local(model, lc.data.x_train, lc.data.y_train, kind=lc.kind,
                           epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                           momentum=cfg.momentum, seed=lc.seed, device=lc.device)
