"""FedPer: federated body, private head (Arivazhagan et al., arXiv 1912.00818).

The model's head (``head_prefixes``, ``fedpers.models.head_keys``) stays on the
client: it is restored from the Context state (``"fedper-head"``) before each use,
trained together with the body by the strategy's local update, stored back, and
never uploaded. The server aggregates the body only; its own copy of the head keeps
its initial values, so ``eval/global_accuracy`` is not meaningful here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clients.private_state import KeepPrivate
from fedpers.models import head_keys

if TYPE_CHECKING:
    from torch import nn


class FedPer(KeepPrivate):
    state_name = "fedper-head"

    def private_keys(self, model: nn.Module) -> set[str]:
        return set(head_keys(model))
