"""Local fine-tuning of the global model before evaluation (the classic personalisation
baseline; e.g. Wang et al., "Federated Evaluation of On-device Personalization",
arXiv 1910.10252).

Training is FedAvg's (every parameter shared, nothing kept). Before each evaluation
the client fine-tunes a copy of the global model it was sent for ``finetune-epochs``
epochs of local SGD (at ``finetune-lr``, else ``lr``) on its own training data and
evaluates that copy; the copy is
thrown away, so nothing is stored between rounds. For anomaly tasks this fine-tunes
the autoencoder on the device's normal data, and the device's threshold is then
calibrated on the fine-tuned model.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from clients.local_training import personal_sgd
from clients.none import NoPersonalization
from fedpers.seeds import Stream

if TYPE_CHECKING:
    from torch import nn

    from clients.base import LocalContext


class FineTune(NoPersonalization):
    """Trains and uploads like FedAvg; only evaluation differs."""

    def eval_model(self, model: nn.Module, local: LocalContext) -> nn.Module:
        tuned = copy.deepcopy(model)
        personal_sgd(tuned, local, local.personal.finetune_epochs, Stream.FINETUNE,
                     lr=local.personal.finetune_lr)
        return tuned
