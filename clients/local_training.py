"""Local training passes: the one call every local update rule trains through
(:func:`local_sgd`), the personalisers' extra passes (:func:`personal_sgd`), and the
seeded per-client local-work profile (stragglers) that caps both.

A share ``straggler-fraction`` of the clients are stragglers: each round they
complete only ``straggler-work`` of the local SGD steps they were asked for
(``local-epochs`` epochs), as slow devices do under a deadline (FedProx, arXiv
1812.06127, Sec. 5.2). Which clients straggle depends only on the run seed and
the partition id, so it is the same in every round and on every machine.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from fedpers.devices import MAX_STEPS
from fedpers.seeds import Stream, derive_seed
from fedpers.training import GradHook, TrainResult, train_local

if TYPE_CHECKING:
    from torch import nn

    from clients.base import LocalContext, TrainingParams


def stragglers(training: TrainingParams) -> frozenset[int]:
    """The partition ids of the straggling clients: ``round(fraction * N)`` of them."""
    count = int(round(training.straggler_fraction * training.num_clients))
    if count == 0:
        return frozenset()
    rng = np.random.default_rng(derive_seed(training.seed, Stream.STRAGGLERS))
    return frozenset(int(p) for p in rng.permutation(training.num_clients)[:count])


def full_steps(training: TrainingParams, num_train: int) -> int:
    """Local SGD steps of a client that finishes its ``local-epochs`` epochs."""
    return training.local_epochs * math.ceil(num_train / training.batch_size)


def straggler_steps(training: TrainingParams, partition_id: int, num_train: int) -> int | None:
    """The local steps a straggler completes (``straggler-work`` of :func:`full_steps`,
    at least 1); ``None`` for a client that is not one. The client's own limit, apart
    from the server's (:func:`server_budget`)."""
    if partition_id not in stragglers(training):
        return None
    return max(1, int(math.floor(training.straggler_work * full_steps(training, num_train))))


def server_budget(local: LocalContext) -> int | None:
    """The step budget the server sent (``max-steps``: partial work under a round
    deadline, fedpers.devices), or ``None``."""
    value = local.server_config.get(MAX_STEPS)
    return None if value is None else max(1, int(value))


def local_sgd(model: nn.Module, local: LocalContext,
              grad_hook: GradHook | None = None) -> TrainResult:
    """Local mini-batch SGD as the run config asks, cut short for stragglers and to
    the server's step budget."""
    training = local.training
    x, y = local.data.x_train, local.data.y_train
    budgets = [b for b in (straggler_steps(training, local.partition_id, len(x)),
                           server_budget(local))
               if b is not None]
    return train_local(model, x, y, kind=local.kind, epochs=training.local_epochs,
                       batch_size=training.batch_size, lr=training.lr,
                       momentum=training.momentum,
                       seed=local.seed, device=local.device, grad_hook=grad_hook,
                       max_steps=min(budgets, default=None))


def personal_budget(local: LocalContext, epochs: int) -> int | None:
    """Straggler cap of an extra local pass of ``epochs`` epochs (``None``: no cap).

    Stragglers complete ``straggler-work`` of these steps too. The server's per-round
    step budget (``max-steps``) caps the strategy's local update only.
    """
    training = local.training
    if local.partition_id not in stragglers(training):
        return None
    steps = epochs * math.ceil(len(local.data.x_train) / training.batch_size)
    return max(1, int(math.floor(training.straggler_work * steps)))


def personal_sgd(model: nn.Module, local: LocalContext, epochs: int, tag: Stream,
                 grad_hook: GradHook | None = None, lr: float = 0.0) -> TrainResult:
    """An extra pass of plain local SGD (fine-tuning, a private head, a personal model).

    Same ``momentum`` and ``batch-size`` as the local update, and its ``lr`` unless
    ``lr`` > 0 is given; batches drawn from a seed derived from the round's seed and
    ``tag``.
    """
    training = local.training
    return train_local(model, local.data.x_train, local.data.y_train, kind=local.kind,
                       epochs=epochs, batch_size=training.batch_size, lr=lr or training.lr,
                       momentum=training.momentum, seed=derive_seed(local.seed, tag),
                       device=local.device, grad_hook=grad_hook,
                       max_steps=personal_budget(local, epochs))
