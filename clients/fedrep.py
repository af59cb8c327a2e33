"""FedRep: shared representation, private head, trained in turn (Collins et al.,
arXiv 2102.07078, Algorithm 1).

Each round the client restores its head (Context state ``"fedrep-head"``), trains
the head alone with the body frozen for ``fedrep-head-epochs`` epochs of plain SGD,
then the body alone with the head frozen through the strategy's local update
(``local-epochs``; FedProx / SCAFFOLD act on the body, the shared part), stores the
head back and uploads the body. The head never leaves the client. The reply's
``steps`` and ``train-loss`` are those of the body pass (what the server
aggregates). The server's copy of the head keeps its initial values, so
``eval/global_accuracy`` is not meaningful here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clients.local_training import personal_sgd
from clients.private_state import KeepPrivate
from fedpers.models import head_keys
from fedpers.seeds import Stream

if TYPE_CHECKING:
    from torch import nn

    from clients.base import LocalContext, LocalUpdate
    from fedpers.training import TrainResult


def _freeze(model: nn.Module, trainable: set[str]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)


class FedRep(KeepPrivate):
    state_name = "fedrep-head"

    def private_keys(self, model: nn.Module) -> set[str]:
        return set(head_keys(model))

    def local_train(self, model: nn.Module, update: LocalUpdate,
                    local: LocalContext) -> TrainResult:
        head = self.private_keys(model)
        names = {name for name, _ in model.named_parameters()}
        try:
            _freeze(model, head)
            personal_sgd(model, local, local.personal.fedrep_head_epochs, Stream.FEDREP_HEAD)
            _freeze(model, names - head)
            return update.train(model, local)
        finally:
            _freeze(model, names)
